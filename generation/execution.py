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
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, nullcontext
from dataclasses import dataclass
from enum import StrEnum

from loguru import logger

import metrics
from generation import lifecycle, progress
from generation.alerts import Alerts
from generation.catalog import PROVIDER_KEYS, Kind
from generation.pipelines import Delivered, Idle, PipelineContext, StillWaiting, provider_job_started
from generation.places import Place
from generation.progress import (
    CANCEL_CALLBACK as CANCEL_CALLBACK,  # bot/telegram/routers/cancel.py answers it
)
from generation.registry import spec_of
from generation.services import Services
from generation.steps import StepJournal
from generation.store import Database, Generation, GenerationStatus, Plan, User, as_utc
from generation.texts import text
from logs import redact
from providers.errors import StepError

# What the chat shows while a kind works ("sending a video..."), besides the status message. Only for
# the kinds that take minutes: the status message already says a photo or a voice is on its way, and
# Telegram shows an action only until the bot's next message (that status message, a second later),
# so for them it would be one more call to Telegram per generation, seen by nobody.
CHAT_ACTIONS = {
    Kind.text_to_video: "upload_video",
    Kind.image_to_video: "upload_video",
}


# Request keys of generations asked for in a Telegram chat (generation/intake.py).
TELEGRAM_REQUEST_PREFIX = "tg:"


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


# How far a long wait's next look falls from its nominal delay, either way, as a share of it. Wide:
# generations held together (a burst) must not poll the provider together, in waves, round after
# round. ±20 % kept a burst's 100 held generations within a few seconds of each other for minutes
# (bench/waiting.py: every one of them polled in the same second).
LONG_WAIT_SPREAD = 0.5


def spread_long_wait(delay: float) -> float:
    """When a generation still running at the provider is looked at again (Plan A frees its slot)."""
    return delay * random.uniform(1 - LONG_WAIT_SPREAD, 1 + LONG_WAIT_SPREAD)


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
    claimed: lifecycle.Claim | None = None,
    working: Place | None = None,
) -> Result:
    """Run one try of a generation. A try that fails in a way that may pass raises RetryLater until
    `max_tries` tries have failed; then, or on a permanent error, the generation fails and is refunded.
    `wait_budget` bounds how long this try waits on the provider; with `can_defer` (Plan A) a longer
    wait ends the try with RetryLater without counting as a failure. `claimed`: the generation was
    recorded already claimed by this runner (Plan B with room at once), so no claim of its own.
    `working`: a place among the runs working at once, taken before the run works (its lease kept
    alive meanwhile) and given up while it only waits for the provider (PipelineContext.idle)."""
    db = services.db
    claim = claimed or await lifecycle.claim(db, generation_id, plan, owner, lease)
    if claim is None:
        return Result.not_claimed
    if claim.generation.attempts == 1:  # its first claim: it waited from its record until now
        metrics.QUEUE_WAIT_SECONDS.labels(plan.value, claim.generation.kind).observe(
            metrics.since(_recorded_at(claim.generation))
        )
    async with _heartbeat(db, generation_id, owner, lease), working or nullcontext():
        idle: Idle = working.given_up if working is not None else nullcontext
        return await _run_claimed(
            services,
            claim,
            plan,
            owner,
            max_tries,
            wait_budget,
            can_defer,
            retry_policy,
            idle,
        )


@asynccontextmanager
async def _heartbeat(db: Database, generation_id: str, owner: str, lease: float) -> AsyncIterator[None]:
    """Renew the lease while this runner lives: a runner that dies (SIGKILL, a lost Redis connection
    cancelling its job) stops renewing, and within one lease others may take the generation over."""

    run = asyncio.current_task()

    async def renew() -> None:
        while True:
            await asyncio.sleep(lease / 3)
            try:
                still_ours = await lifecycle.renew_lease(db, generation_id, owner, lease)
            except Exception as error:  # the next beat tries again; the lease has slack for it
                logger.bind(generation=generation_id).warning("could not renew the lease: {!r}", error)
                continue
            if not still_ours and run is not None:
                # Another runner took it over (this one could not renew in time): two runners must
                # not both go on to deliver. A paid call in progress is still journaled first.
                logger.bind(generation=generation_id).warning("lease taken over by another runner: stopping")
                run.cancel()
                return

    task = asyncio.create_task(renew(), name=f"lease-{generation_id}")
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def _run_claimed(
    services: Services,
    claim: lifecycle.Claim,
    plan: Plan,
    owner: str,
    max_tries: int,
    wait_budget: float,
    can_defer: bool,
    retry_policy: RetryPolicy | None,
    idle: Idle,
) -> Result:
    db = services.db
    generation, user = claim.generation, claim.user
    log = logger.bind(
        generation=generation.id,
        kind=generation.kind,
        plan=plan.value,
        user=user.telegram_id,
        bot=user.bot_name,
    )
    model = services.catalog.get(generation.model)
    spec = spec_of(Kind(generation.kind))
    steps = StepJournal(db, generation.id, journal=claim.journal)
    status = progress.Subject(services, generation, user.language, steps)
    try:
        if model is None:
            raise StepError(f"model {generation.model!r} is no longer in the catalogue")
        if spec is None:
            raise StepError(f"kind {generation.kind!r} is no longer served")
        context = PipelineContext(
            services=services,
            generation=generation,
            model=model,
            steps=steps,
            language=user.language,
            wait_budget=wait_budget,
            can_defer=can_defer,
            idle=idle,
        )
        # A first attempt's start is told at DEBUG only: its record's line said where it went
        # ("recorded and enqueued", "recorded; running inline") and its end's line tells how long it
        # took from its record; each line costs the hot path (a Plan A generation wrote three). A
        # retry's start is told. arq's own line as a job starts is DEBUG's only too (logs.py).
        (log.info if generation.attempts > 1 else log.debug)(
            "running, attempt {}, {:.2f}s after its record",
            generation.attempts,
            metrics.since(_recorded_at(generation)),
        )
        async with _working_alongside(context):
            delivered = await spec.pipeline(context)
        delivered_at = time.time()
    except asyncio.CancelledError:
        # Stopped (a process stopping, an aborted job): what the run owes its journal (a finished
        # prediction's id) is written first, so the next run finds it rather than looking for it;
        # a write that fails leaves that to the next run's look (pipelines.create_once).
        with contextlib.suppress(Exception):
            await asyncio.shield(steps.flush())
        raise
    except lifecycle.NotRunning:
        # A cancellation came just before the hand-over; it refunded and told the user.
        log.info("canceled before its delivery; nothing sent")
        return Result.canceled
    except StillWaiting as waiting:
        log.debug("provider still working; back in {:.0f}s", waiting.delay)
        metrics.DEFERRALS.labels(generation.kind, plan.value, "provider_working").inc()
        await lifecycle.release(db, generation.id, owner)
        raise RetryLater(spread_long_wait(waiting.delay), waiting) from waiting
    except Exception as error:
        retryable = (isinstance(error, StepError) and error.retryable) or not isinstance(error, StepError)
        failures = generation.failures + 1
        if retryable and failures < max_tries:
            delay = (retry_policy or RetryPolicy()).delay(
                failures, error.retry_after if isinstance(error, StepError) else None
            )
            log.warning("try failed ({} of {}), retrying in {:.1f}s: {}", failures, max_tries, delay, error)
            metrics.RETRIES.labels(generation.kind, plan.value, metrics.error_reason(error)).inc()
            await steps.flush()  # before another runner may take it
            await lifecycle.release(db, generation.id, owner, failed=True)
            await progress.update(status, progress.Stage.queued)  # not "rendering" while it waits
            raise RetryLater(delay, error) from error
        settled = await settle_failure(services, generation, user, steps, error)
        # An error only an operator can fix (the account's credit, its token): the admins are told,
        # once the user has their refund.
        await Alerts(services).provider_error(services.catalog.provider_of(generation.model), error)
        if not settled:
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
    metrics.delivered(
        generation.kind,
        plan.value,
        provider_started_at=_provider_job_created_at(await steps.load(), services),
        handed_over_at=_float_or_none(await steps.saved(lifecycle.DELIVERING_STEP)),
        delivered_at=delivered_at,
    )
    log.info(
        "done: {} unit(s) delivered, {:.2f}s after its record",
        delivered.units,
        metrics.since(_recorded_at(generation)),
    )
    return Result.done


@asynccontextmanager
async def _working_alongside(context: PipelineContext) -> AsyncIterator[None]:
    """The status message and chat action go out alongside the pipeline, not before it: the provider's
    create never waits on Telegram. They are done (and journaled) before the run settles, so the
    status message it removes is known."""
    showing = asyncio.create_task(_show_working(context), name=f"status-{context.generation.id}")
    if not context.generation.request_key.startswith(TELEGRAM_REQUEST_PREFIX):
        # Only a Telegram update proves the chat hears the bot (a user who blocked it cannot write to
        # it): for any other request the status goes first, so a blocked chat fails the try (and is
        # refunded) before a paid call is made.
        await showing
    try:
        yield
    finally:
        await asyncio.wait([showing])
        if not showing.cancelled() and showing.exception() is not None:
            # A chat that refuses even the status (a blocked bot): the delivery reports it for good.
            logger.bind(generation=context.generation.id).info(
                "status message not shown: {}", showing.exception()
            )


async def _show_working(context: PipelineContext) -> None:
    """The status message for this run (generation/progress.py), and for a long kind a chat action
    for each try."""
    if not context.can_deliver:
        return
    # One turn of the loop first: the pipeline's first call (a provider's create) is built and sent
    # before this message is, which takes the loop about half a millisecond.
    await asyncio.sleep(0)
    generation = context.generation
    await progress.show_started(context, resuming=await provider_job_started(context.steps))
    action = CHAT_ACTIONS.get(Kind(generation.kind))
    if action is None:
        return
    # A chat action is a courtesy; the delivery itself reports real trouble.
    with contextlib.suppress(StepError):
        await context.services.delivery.chat_action(generation.bot_name, context.chat_id, action)


async def settle_success(
    services: Services, generation: Generation, user: User, steps: StepJournal, delivered: Delivered
) -> bool:
    """Charge what was delivered, refund the rest, tell the user; False when it was cancelled meanwhile
    (the cancellation refunded and told the user)."""
    refund = lifecycle.refund_due(generation, delivered.units)
    balance = await lifecycle.balance_after_refund(services.db, generation, refund)
    if balance is None:
        return False
    charged = generation.price - refund
    if refund:
        message = text(
            "done_partial",
            user.language,
            delivered=delivered.units,
            requested=generation.units,
            price=charged,
            refund=refund,
            balance=balance,
        )
    else:
        message = text("done", user.language, price=charged, balance=balance)
    result = delivered.result
    model = services.catalog.get(generation.model)
    if model is not None and model.demo:
        # Made by the demo provider (no key): the user and the API's result both say so.
        key = PROVIDER_KEYS.get(model.provider, model.provider)
        message += "\n" + text("demo_result", user.language, key=key)
        result = {**result, "demo": True}
    return await _settle(
        services,
        generation,
        steps,
        "notify_done",
        message,
        GenerationStatus.done,
        refund,
        result=result,
    )


async def settle_failure(
    services: Services, generation: Generation, user: User, steps: StepJournal, error: BaseException
) -> bool:
    """Refund what was not delivered and tell the user why; False when it was cancelled meanwhile."""
    refund = lifecycle.refund_due(
        generation, lifecycle.delivered_units(await steps.saved(lifecycle.DELIVER_STEP))
    )
    balance = await lifecycle.balance_after_refund(services.db, generation, refund)
    if balance is None:
        return False
    reason = error.reason if isinstance(error, StepError) else "failed_generic"
    message = text(reason, user.language, refund=refund, balance=balance)
    settled = await _settle(
        services,
        generation,
        steps,
        "notify_failed",
        message,
        GenerationStatus.failed,
        refund,
        error=_public_error(error),
    )
    if settled:
        metrics.FAILURES.labels(generation.kind, generation.plan, metrics.error_reason(error)).inc()
    return settled


async def _settle(
    services: Services,
    generation: Generation,
    steps: StepJournal,
    step: str,
    message: str,
    status: GenerationStatus,
    refund: int,
    *,
    result: dict[str, object] | None = None,
    error: str | None = None,
) -> bool:
    """Send the final message (once: journaled), then as one unit journal it, refund what was not
    delivered and end the generation (lifecycle.settle_journaled); then remove the status message. A
    crash before that unit reruns this with the message journaled or not; the refund is keyed."""
    sent = await _send_final_message(services, generation, steps, step, message)
    settled = await lifecycle.settle_journaled(
        services.db,
        steps,
        {} if sent is None else {step: sent},
        generation,
        status,
        refund,
        result=result,
        error=error,
    )
    if settled:
        metrics.ended(
            generation.kind,
            generation.model,
            generation.plan,
            status.value,
            refund,
            metrics.since(_recorded_at(generation)),
        )
        await _remove_status_message(services, generation, steps)
    return settled


async def _send_final_message(
    services: Services, generation: Generation, steps: StepJournal, step: str, message: str
) -> int | None:
    """The message's id when it was sent now; None when it was sent before or cannot be sent."""
    if generation.chat_id is None or not services.delivery.can_deliver(generation.bot_name):
        return None
    if await steps.is_done(step):
        return None
    try:
        return await services.delivery.send_text(generation.bot_name, generation.chat_id, message)
    except StepError as error:
        # The user blocked the bot or Telegram is down: the money is settled all the same.
        logger.bind(generation=generation.id).warning("could not message the user: {}", error)
        return None


async def _remove_status_message(services: Services, generation: Generation, steps: StepJournal) -> None:
    status_message_id = await steps.saved(progress.STATUS_STEP)
    if generation.chat_id is None or not isinstance(status_message_id, int):
        return
    try:
        await services.delivery.delete_message(generation.bot_name, generation.chat_id, status_message_id)
    except StepError as error:
        logger.bind(generation=generation.id).info("status message not removed: {}", error)


def _public_error(error: BaseException) -> str:
    """What GET /api/generations shows: the error's class and message; unexpected errors show only
    their class. A provider's message may quote what it was given (a URL with a token in it): masked
    like a log line, before it is cut (a cut secret no longer has its shape)."""
    if isinstance(error, StepError):
        return redact(f"{type(error).__name__}: {error}")[:500]
    return f"internal error ({type(error).__name__})"


def _recorded_at(generation: Generation) -> float:
    return as_utc(generation.created_at).timestamp()


def _provider_job_created_at(journal: dict[str, object], services: Services) -> float | None:
    """When the generation's provider job was created, as its journal tells it; None for kinds whose
    provider answers at once (speech, voice cloning: their calls are timed by the provider metrics).

    A job's id is journaled with the moment waiting for it gives up, its creation + the deadline of its
    step (generation/pipelines.py `create_once`): the one moment of its creation every try can read."""
    settings = services.settings
    deadlines = {"prediction": settings.generation_deadline, "training": settings.training_deadline}
    created = [
        give_up_at - deadline
        for step, deadline in deadlines.items()
        if (give_up_at := _float_or_none(journal.get(f"{step}:deadline"))) is not None
    ]
    return min(created, default=None)


def _float_or_none(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) else None
