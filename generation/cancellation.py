"""Cancelling a generation (`/cancel`, the Cancel button): final at once, and refunded for what was
not delivered, exactly once, whatever the timing.

The status moves to `canceled` only from `queued` or `running`, in the same transaction as the refund
(keyed `refund:<generation>`, so a runner settling at the same moment cannot refund again). A runner
that is still working finds the status final and stops without delivering or messaging.

Once its result is being handed to the chat, a generation can no longer be cancelled: the user may
get it, and pays for what arrives (generation/lifecycle.py); they are told it is already being sent.
"""

from __future__ import annotations

from loguru import logger
from sqlalchemy import select

from generation import lifecycle
from generation.catalog import Kind
from generation.lifecycle import ACTIVE, Canceled
from generation.registry import spec_of
from generation.services import Services
from generation.steps import StepJournal
from generation.store import Generation

__all__ = ["Canceled", "active_generations", "being_delivered", "cancel_generation"]


async def cancel_generation(services: Services, generation_id: str) -> Canceled | None:
    """Cancel and refund (generation/lifecycle.py); None when the generation had already ended or its
    result is being sent (`being_delivered` tells which). Then stop the provider's job, best effort."""
    canceled = await lifecycle.cancel(services.db, generation_id)
    if canceled is None:
        return None
    logger.bind(generation=generation_id, plan=canceled.generation.plan).info(
        "canceled; {} returned", canceled.refund
    )
    await _cancel_at_provider(services, canceled.generation)
    return canceled


async def _cancel_at_provider(services: Services, generation: Generation) -> None:
    """Stop the provider's work too (the kind's own canceller knows its steps); best effort: the
    refund does not wait on it."""
    spec = spec_of(Kind(generation.kind))
    if spec is None or spec.cancel is None:
        return
    try:
        await spec.cancel(services, await StepJournal(services.db, generation.id).load())
    except Exception as error:
        logger.bind(generation=generation.id).warning("could not cancel at the provider: {!r}", error)


async def being_delivered(services: Services, generation_id: str) -> bool:
    """Whether a cancellation was refused because the result is on its way to the chat."""
    return await lifecycle.being_delivered(services.db, generation_id)


async def active_generations(services: Services, user_id: int) -> list[str]:
    async with services.db.sessions() as session:
        rows = await session.scalars(
            select(Generation.id)
            .where(Generation.user_id == user_id, Generation.status.in_(ACTIVE))
            .order_by(Generation.created_at)
        )
        return list(rows)
