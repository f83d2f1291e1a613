"""Provider callbacks (Replicate webhooks): a job's final state, journaled for the generation that
waits on it, once per callback id."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from generation.store import Database, Generation, Step, WebhookEvent
from providers.replicate import TERMINAL

WAITING_STEPS = frozenset({"prediction", "training"})


async def take_job_result(
    db: Database, webhook_id: str, generation_id: str, step: str, payload: dict[str, Any]
) -> Generation | None:
    """Journal `<step>:result` from a callback; answers the generation when this callback brought its
    result (so its runner can be woken), None for a repeat, a non-final state, or a stranger's job."""
    if step not in WAITING_STEPS or payload.get("status") not in TERMINAL:
        return None
    try:
        async with db.transaction() as session:
            session.add(WebhookEvent(id=webhook_id[:128]))
            await session.flush()
            generation = await session.get(Generation, generation_id)
            job_id = await session.scalar(
                select(Step.result).where(Step.generation_id == generation_id, Step.name == f"{step}:id")
            )
            # Only the job this generation journaled: a callback naming another job changes nothing.
            if generation is None or job_id is None or job_id != payload.get("id"):
                return None
            already = await session.scalar(
                select(Step.name).where(Step.generation_id == generation_id, Step.name == f"{step}:result")
            )
            if already is None:
                state = {
                    "id": payload["id"],
                    "status": payload["status"],
                    "output": payload.get("output"),
                    "error": None if payload.get("error") is None else str(payload["error"])[:500],
                }
                session.add(Step(generation_id=generation_id, name=f"{step}:result", result=state))
            return generation
    except IntegrityError:
        return None  # this webhook-id was taken before (a redelivery), or the poll journaled it first
