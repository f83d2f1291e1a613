"""Cancelling a generation (`/cancel`, the Cancel button): final at once, and refunded for what was
not delivered, exactly once, whatever the timing.

The status moves to `canceled` only from `queued` or `running`, in the same transaction as the refund
(keyed `refund:<generation>`, so a runner settling at the same moment cannot refund again). A runner
that is still working finds the status final and stops without delivering or messaging.
"""

from __future__ import annotations

from dataclasses import dataclass

from loguru import logger
from sqlalchemy import func, select, update

from generation import ledger
from generation.kinds.speech import STORED_STEP
from generation.services import Services
from generation.store import Generation, GenerationStatus, Step

ACTIVE = (GenerationStatus.queued, GenerationStatus.running)
# The steps that name a provider job still worth stopping (or, for a clone, undoing).
PROVIDER_STEPS = [
    "prediction:id",
    "prediction:result",
    "training:id",
    "training:result",
    "clone:id",
    STORED_STEP,
]


@dataclass(frozen=True)
class Canceled:
    generation: Generation
    refund: int
    balance: int


async def cancel_generation(services: Services, generation_id: str) -> Canceled | None:
    """Cancel and refund; None when the generation had already ended."""
    async with services.db.transaction() as session:
        moved = await session.execute(
            update(Generation)
            .where(Generation.id == generation_id, Generation.status.in_(ACTIVE))
            .values(
                status=GenerationStatus.canceled,
                error="canceled by the user",
                lease_owner=None,
                lease_expires_at=None,
                finished_at=func.now(),
            )
        )
        if not moved.rowcount:  # type: ignore[attr-defined]
            return None
        generation = await session.get(Generation, generation_id)
        assert generation is not None
        delivered = await session.scalar(
            select(Step.result).where(Step.generation_id == generation_id, Step.name == "deliver")
        )
        delivered_units = len(delivered) if isinstance(delivered, list) else 0
        refund = generation.price - min(generation.price, delivered_units * generation.unit_price)
        balance = await ledger.balance_of(session, generation.user_id)
        if refund > 0:
            posting = await ledger.credit(
                session,
                generation.user_id,
                refund,
                ledger.refund_key(generation_id),
                generation_id=generation_id,
            )
            refund = refund if posting.applied else 0
            balance = posting.balance
            generation.refunded = generation.refunded + refund
    logger.bind(generation=generation_id, plan=generation.plan).info("canceled; {} returned", refund)
    await _cancel_at_provider(services, generation_id)
    return Canceled(generation=generation, refund=refund, balance=balance)


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
