"""Cancelling a generation (`/cancel`, the Cancel button): final at once, and refunded for what was
not delivered, exactly once, whatever the timing.

The status moves to `canceled` only from `queued` or `running`, in the same transaction as the refund
(keyed `refund:<generation>`, so a runner settling at the same moment cannot refund again). A runner
that is still working finds the status final and stops without delivering or messaging.
"""

from __future__ import annotations

from loguru import logger
from sqlalchemy import select

from generation import lifecycle
from generation.kinds.speech import STORED_STEP
from generation.lifecycle import ACTIVE, Canceled
from generation.services import Services
from generation.store import Generation, Step

__all__ = ["Canceled", "active_generations", "cancel_generation"]

# The steps that name a provider job still worth stopping (or, for a clone, undoing).
PROVIDER_STEPS = [
    "prediction:id",
    "prediction:result",
    "training:id",
    "training:result",
    "clone:id",
    STORED_STEP,
]


async def cancel_generation(services: Services, generation_id: str) -> Canceled | None:
    """Cancel and refund (generation/lifecycle.py); None when the generation had already ended. Then
    stop the provider's job, best effort."""
    canceled = await lifecycle.cancel(services.db, generation_id)
    if canceled is None:
        return None
    logger.bind(generation=generation_id, plan=canceled.generation.plan).info(
        "canceled; {} returned", canceled.refund
    )
    await _cancel_at_provider(services, generation_id)
    return canceled


async def _cancel_at_provider(services: Services, generation_id: str) -> None:
    """Stop the provider's job too, when one was started (best effort: the refund does not wait on it)."""
    async with services.db.sessions() as session:
        rows = await session.execute(
            select(Step.name, Step.result).where(
                Step.generation_id == generation_id,
                Step.name.in_(PROVIDER_STEPS),
            )
        )
        jobs: dict[str, object] = {name: result for name, result in rows}
    try:
        if "prediction:id" in jobs and "prediction:result" not in jobs:
            await services.replicate.cancel(str(jobs["prediction:id"]))
        if "training:id" in jobs and "training:result" not in jobs:
            await services.replicate.cancel_training(str(jobs["training:id"]))
        if "clone:id" in jobs and STORED_STEP not in jobs:
            # A voice cloned for a generation that will not keep it: free the voice slot.
            await services.elevenlabs.delete_voice(str(jobs["clone:id"]))
    except Exception as error:
        logger.bind(generation=generation_id).warning("could not cancel at the provider: {!r}", error)


async def active_generations(services: Services, user_id: int) -> list[str]:
    async with services.db.sessions() as session:
        rows = await session.scalars(
            select(Generation.id)
            .where(Generation.user_id == user_id, Generation.status.in_(ACTIVE))
            .order_by(Generation.created_at)
        )
        return list(rows)
