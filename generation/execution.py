"""Running one generation: claim it, run its kind's pipeline, settle. The one core both plans call.

Plan A's job and Plan B's inline runner are thin wrappers over `execute`; they differ only in what
they do with `RetryLater` (a deferred job, or nothing: Plan B's one attempt is always the last).

Settling is ordered so that a crash at any point is finished by the next run without doing anything
twice: refund (keyed, once), then the user's message (journaled, once), then the final status.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from enum import StrEnum

from loguru import logger
from sqlalchemy import func, select, update

from generation import ledger, progress
from generation.catalog import Kind
from generation.pipelines import Delivered, PipelineContext, StillWaiting, provider_job_started
from generation.progress import CANCEL_CALLBACK as CANCEL_CALLBACK  # bot/routers/cancel.py answers it
from generation.registry import PIPELINES
from generation.services import Services
from generation.steps import StepJournal
from generation.store import (
    Database,
    Generation,
    GenerationStatus,
    Plan,
    User,
    claim_generation,
    get_generation,
    release_generation,
    renew_lease,
)
from generation.texts import text
from providers.errors import StepError

# What the chat shows while a kind works ("sending a photo...").
CHAT_ACTIONS = {
    Kind.text_to_image: "upload_photo",
    Kind.neuro_photo: "upload_photo",
    Kind.text_to_video: "upload_video",
    Kind.image_to_video: "upload_video",
    Kind.text_to_speech: "record_voice",
}


class RetryLater(Exception):
    """A try failed in a way that may pass; try again after `delay` seconds."""

    def __init__(self, delay: float, cause: BaseException) -> None:
        super().__init__(f"retry in {delay:.1f}s after {cause}")
        self.delay = delay
        self.cause = cause


class Result(StrEnum):
    done = "done"
    failed = "failed"
    canceled = "canceled"  # the user cancelled it while it ran; the cancellation settled it
    not_claimed = "not_claimed"  # someone else runs it, it is on the other plan, or it is finished


@dataclass(frozen=True)
class RetryPolicy:
    base: float = 1.0
    cap: float = 60.0
    jitter: float = 0.2

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        if retry_after is not None:
            return max(float(retry_after), 0.0)
        backoff = min(self.cap, self.base * 2 ** max(attempt - 1, 0))
        return float(backoff * (1 + random.uniform(-self.jitter, self.jitter)))


async def execute(
    services: Services,
    generation_id: str,
    plan: Plan,
    owner: str,
    *,
    max_tries: int,
    lease: float,
    wait_budget: float,
    can_defer: bool,
    retry_policy: RetryPolicy | None = None,
) -> Result:
    """Run one try of a generation. A try that fails in a way that may pass raises RetryLater until
    `max_tries` tries have failed; then, or on a permanent error, the generation fails and is refunded.
    `wait_budget` bounds how long this try waits on the provider; with `can_defer` (Plan A) a longer
    wait ends the try with RetryLater without counting as a failure."""
    db = services.db
    if not await claim_generation(db, generation_id, plan, owner, lease):
        return Result.not_claimed
    async with _heartbeat(db, generation_id, owner, lease):
        return await _run_claimed(
            services, generation_id, plan, owner, max_tries, wait_budget, can_defer, retry_policy
        )


@asynccontextmanager
async def _heartbeat(db: Database, generation_id: str, owner: str, lease: float) -> AsyncIterator[None]:
    """Renew the lease while this runner lives: a runner that dies (SIGKILL, a lost Redis connection
    cancelling its job) stops renewing, and within one lease others may take the generation over."""

    async def renew() -> None:
        while True:
            await asyncio.sleep(lease / 3)
            try:
                await renew_lease(db, generation_id, owner, lease)
            except Exception as error:  # the next beat tries again; the lease has slack for it
                logger.bind(generation=generation_id).warning("could not renew the lease: {!r}", error)

    task = asyncio.create_task(renew(), name=f"lease-{generation_id}")
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def _run_claimed(
    services: Services,
    generation_id: str,
    plan: Plan,
    owner: str,
    max_tries: int,
    wait_budget: float,
    can_defer: bool,
    retry_policy: RetryPolicy | None,
) -> Result:
    db = services.db
    generation = await get_generation(db, generation_id)
    assert generation is not None
    async with db.sessions() as session:
        user = await session.get(User, generation.user_id)
    assert user is not None
    log = logger.bind(
        generation=generation.id,
        kind=generation.kind,
        plan=plan.value,
        user=user.telegram_id,
        bot=user.bot_name,
    )
    model = services.catalog.get(generation.model)
    steps = StepJournal(db, generation.id)
    status = progress.Subject(services, generation, user.language, steps)
    try:
        if model is None:
            raise StepError(f"model {generation.model!r} is no longer in the catalogue")
        context = PipelineContext(
            services=services,
            generation=generation,
            model=model,
            steps=steps,
            language=user.language,
            wait_budget=wait_budget,
            can_defer=can_defer,
        )
        await _show_working(context)
        log.info("running, attempt {}", generation.attempts)
        delivered = await PIPELINES[Kind(generation.kind)](context)
    except StillWaiting as waiting:
        log.debug("provider still working; back in {:.0f}s", waiting.delay)
        await release_generation(db, generation.id, owner)
        raise RetryLater(waiting.delay, waiting) from waiting
    except Exception as error:
        retryable = (isinstance(error, StepError) and error.retryable) or not isinstance(error, StepError)
        failures = generation.failures + 1
        if retryable and failures < max_tries:
            delay = (retry_policy or RetryPolicy()).delay(
                failures, error.retry_after if isinstance(error, StepError) else None
            )
            log.warning("try failed ({} of {}), retrying in {:.1f}s: {}", failures, max_tries, delay, error)
            await release_generation(db, generation.id, owner, failed=True)
            await progress.update(status, progress.Stage.queued)  # not "rendering" while it waits
            raise RetryLater(delay, error) from error
        if not await settle_failure(services, generation, user, steps, error):
            log.info("canceled while it ran ({})", type(error).__name__)
            return Result.canceled
        if isinstance(error, StepError):
            log.warning("failed for good: {}", error)
        else:
            log.exception("failed for good on an unexpected error")
        return Result.failed
    if not await settle_success(services, generation, user, steps, delivered):
        log.info("canceled while it ran")
        return Result.canceled
    log.info("done: {} unit(s) delivered", delivered.units)
    return Result.done


async def _show_working(context: PipelineContext) -> None:
    """The status message for this run (generation/progress.py), and a chat action for each try."""
    if not context.can_deliver:
        return
    generation = context.generation
    await progress.show_started(context, resuming=await provider_job_started(context.steps))
    # A chat action is a courtesy; the delivery itself reports real trouble.
    with contextlib.suppress(StepError):
        await context.services.delivery.chat_action(
            generation.bot_name, context.chat_id, CHAT_ACTIONS.get(Kind(generation.kind), "typing")
        )


async def settle_success(
    services: Services, generation: Generation, user: User, steps: StepJournal, delivered: Delivered
) -> bool:
    """Charge what was delivered, refund the rest, tell the user; False when it was cancelled meanwhile
    (the cancellation refunded and told the user)."""
    if await _canceled(services, generation.id):
        return False
    delivered_price = min(generation.price, delivered.units * generation.unit_price)
    refund = generation.price - delivered_price
    balance = await _refund(services, generation, refund)
    if refund:
        message = text(
            "done_partial",
            user.language,
            delivered=delivered.units,
            requested=generation.units,
            price=delivered_price,
            refund=refund,
            balance=balance,
        )
    else:
        message = text("done", user.language, price=delivered_price, balance=balance)
    await _tell_user(services, generation, steps, "notify_done", message)
    await _finish(services, generation, GenerationStatus.done, refund, result=delivered.result)
    return True


async def settle_failure(
    services: Services, generation: Generation, user: User, steps: StepJournal, error: BaseException
) -> bool:
    """Refund what was not delivered and tell the user why; False when it was cancelled meanwhile."""
    if await _canceled(services, generation.id):
        return False
    delivered_message_ids = await steps.saved("deliver")
    delivered_units = len(delivered_message_ids) if isinstance(delivered_message_ids, list) else 0
    refund = generation.price - min(generation.price, delivered_units * generation.unit_price)
    balance = await _refund(services, generation, refund)
    reason = error.reason if isinstance(error, StepError) else "failed_generic"
    message = text(reason, user.language, refund=refund, balance=balance)
    await _tell_user(services, generation, steps, "notify_failed", message)
    await _finish(services, generation, GenerationStatus.failed, refund, error=_public_error(error))
    return True


async def _canceled(services: Services, generation_id: str) -> bool:
    async with services.db.sessions() as session:
        status = await session.scalar(select(Generation.status).where(Generation.id == generation_id))
    return status == GenerationStatus.canceled


async def _refund(services: Services, generation: Generation, amount: int) -> int:
    """Credit back what was not delivered, once per generation (the key makes a rerun a no-op)."""
    async with services.db.transaction() as session:
        if amount <= 0:
            return await ledger.balance_of(session, generation.user_id)
        posting = await ledger.credit(
            session, generation.user_id, amount, ledger.refund_key(generation.id), generation_id=generation.id
        )
        return posting.balance


async def _tell_user(
    services: Services, generation: Generation, steps: StepJournal, step: str, message: str
) -> None:
    if generation.chat_id is None or not services.delivery.can_deliver(generation.bot_name):
        return
    delivery = services.delivery
    chat_id = generation.chat_id
    try:
        await steps.run(step, lambda: delivery.send_text(generation.bot_name, chat_id, message))
        status_message_id = await steps.saved(progress.STATUS_STEP)
        if isinstance(status_message_id, int):
            await delivery.delete_message(generation.bot_name, chat_id, status_message_id)
    except StepError as error:
        # The user blocked the bot or Telegram is down: the money is already settled; log and move on.
        logger.bind(generation=generation.id).warning("could not message the user: {}", error)


async def _finish(
    services: Services,
    generation: Generation,
    status: GenerationStatus,
    refunded: int,
    *,
    result: dict[str, object] | None = None,
    error: str | None = None,
) -> None:
    async with services.db.transaction() as session:
        await session.execute(
            update(Generation)
            # Only from running: a cancellation that came meanwhile keeps its final status.
            .where(Generation.id == generation.id, Generation.status == GenerationStatus.running)
            .values(
                status=status,
                refunded=refunded,
                result=result,
                error=error,
                lease_owner=None,
                lease_expires_at=None,
                finished_at=func.now(),
            )
        )


def _public_error(error: BaseException) -> str:
    """What GET /api/generations shows: the error's class and message; providers' messages carry no
    secrets (providers/errors.py), and unexpected errors show only their class."""
    if isinstance(error, StepError):
        return f"{type(error).__name__}: {error}"[:500]
    return f"internal error ({type(error).__name__})"
