"""Plan A's runner: the arq job that runs a generation, and the arq worker that runs the jobs. `aibot
worker` runs one alone (`arq jobs.worker.WorkerSettings` too); `aibot run` embeds one when Redis answers.

The job carries only the generation id. Retries are decided by generation/execution.py: arq retries
only on `Retry`, and a plain exception or a job timeout would be final in arq, so every try ends either
in a settled generation or in `Retry(defer=...)`.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Sequence
from typing import Any

from arq import Retry
from arq.cron import cron
from arq.worker import Worker, func
from loguru import logger
from redis.exceptions import RedisError

from generation import progress
from generation.execution import RetryLater, RetryPolicy, execute
from generation.limits import Limits
from generation.services import Services
from generation.store import GenerationStatus, Plan, as_utc, get_generation
from jobs.limits import ConcurrencyLimiter
from jobs.queue import JOB_FUNCTION, ArqQueue, deserialize, redis_settings_for, serialize
from jobs.reconciler import reconcile_job
from settings import Settings

# When the sweep looks for lines with room (every 5 s): a lost wake costs a waiter at most that.
WAKE_SWEEP_SECONDS = set(range(0, 60, 5))

# A try must end (settle or ask for a retry) before arq's job timeout cancels it: keep a margin.
TIMEOUT_MARGIN = 20.0


async def run_generation(ctx: dict[str, Any], generation_id: str) -> str:
    services: Services = ctx["services"]
    settings = services.settings
    job_try: int = ctx.get("job_try", 1)
    generation = await get_generation(services.db, generation_id)
    if generation is None:
        return "unknown generation"
    if generation.plan != Plan.A:
        # Its enqueue looked failed, so it moved to Plan B, yet the job reached Redis: not ours.
        return "on Plan B"
    provider = services.catalog.provider_of(generation.model)
    limiter = _limiter(ctx, settings)
    if not GenerationStatus(generation.status).is_final:
        arrival = as_utc(generation.created_at).timestamp()
        try:
            refusal = await limiter.acquire(generation.id, generation.user_id, provider, arrival=arrival)
        except RedisError as error:  # Redis went away under this job: come back when it may be back
            raise Retry(defer=2) from error
        if refusal is not None:
            logger.bind(generation=generation.id, plan="A").debug("waits its turn: {} is full", refusal.limit)
            await _wake(ctx, refusal.wake)
            # Every look at the limiter tells the user (throttled): never waiting in silence.
            place = refusal.place
            await progress.waiting_for_slot(
                services, generation, refusal.limit, place=None if place is None else lambda: place
            )
            raise Retry(defer=refusal.retry_in)
    try:
        result = await execute(
            services,
            generation_id,
            Plan.A,
            owner=f"{ctx['worker_id']}:{job_try}",
            max_tries=settings.job_max_tries,
            lease=settings.lease_seconds,
            wait_budget=min(settings.job_wait_budget, max(1.0, settings.job_timeout - TIMEOUT_MARGIN)),
            can_defer=True,
            retry_policy=RetryPolicy(
                base=settings.retry_backoff_base, cap=settings.retry_backoff_cap, jitter=settings.retry_jitter
            ),
        )
    except RetryLater as retry:
        raise Retry(defer=retry.delay) from retry.cause  # still in flight: it keeps its slots
    settled = await get_generation(services.db, generation_id)
    if settled is not None and GenerationStatus(settled.status).is_final:
        try:
            await _wake(ctx, await limiter.release(generation.id, generation.user_id, provider))
        except RedisError as error:  # the slots expire on their own; the generation is settled
            logger.bind(generation=generation.id).warning("could not free its slots: {!r}", error)
    return result.value


async def _wake(ctx: dict[str, Any], generation_ids: Sequence[str]) -> None:
    """Run now the deferred jobs of generations a slot was freed for (first in their lines)."""
    if generation_ids:
        await ArqQueue(ctx["redis"]).wake(*generation_ids)


async def wake_waiting_job(ctx: dict[str, Any]) -> int:
    """arq cron: wake the first in every line whose limit has room (slots that expired with a dead
    worker, a wake lost as its job was being deferred); a cheap look at a few Redis keys."""
    waiting = await _limiter(ctx, ctx["services"].settings).waking_heads()
    await _wake(ctx, waiting)
    return len(waiting)


def _limiter(ctx: dict[str, Any], settings: Settings) -> ConcurrencyLimiter:
    """One per worker run, on the worker's own Redis pool (arq puts it in ctx["redis"])."""
    limiter: ConcurrencyLimiter | None = ctx.get("limiter")
    if limiter is None:
        limits = Limits.from_settings(settings)
        # Long enough to outlast a deferred retry or a wait between looks at the provider.
        slot_ttl = settings.job_timeout + settings.retry_backoff_cap + settings.long_wait_poll + 30
        limiter = ctx["limiter"] = ConcurrencyLimiter(ctx["redis"], limits, slot_ttl)
    return limiter


# arq counts every run of a job as a try, waits included (a training is looked at every few seconds
# for hours); failures are counted in the database instead, so arq's own limit only has to be out of reach.
ARQ_MAX_TRIES = 100_000


def worker_options(settings: Settings) -> dict[str, Any]:
    """An arq worker's options (keyword arguments of arq's `Worker`), read from settings when a worker
    is built, never at import. Jobs find the process's services in ctx["services"]."""
    seconds = set(range(0, 60, settings.reconcile_every))
    return {
        "functions": [
            func(run_generation, name=JOB_FUNCTION, max_tries=ARQ_MAX_TRIES, timeout=settings.job_timeout)
        ],
        "cron_jobs": [
            cron(reconcile_job, name="reconcile", second=seconds, run_at_startup=True, timeout=60),
            cron(wake_waiting_job, name="wake-waiting", second=WAKE_SWEEP_SECONDS, timeout=30),
        ],
        "redis_settings": redis_settings_for(settings),
        "ctx": {"worker_id": f"worker-{uuid.uuid4().hex[:8]}"},
        "max_jobs": settings.worker_max_jobs,
        "job_timeout": settings.job_timeout,
        "poll_delay": settings.worker_poll_delay,
        "job_serializer": serialize,
        "job_deserializer": deserialize,
        "keep_result": 3600,
        "allow_abort_jobs": True,  # /cancel interrupts a running job
    }


def build_worker(settings: Settings, services: Services) -> Worker:
    options = worker_options(settings)
    options["ctx"]["services"] = services
    return Worker(**options, handle_signals=False)


async def run_supervised(settings: Settings, services: Services, restart_delay: float = 2.0) -> None:
    """Run a worker until cancelled, building it anew whenever it stops: arq's worker exits when its
    Redis connection is lost, and a Redis restart must not end Plan A for good."""
    while True:
        worker = build_worker(settings, services)
        try:
            await worker.async_run()
        except asyncio.CancelledError:
            raise
        except Exception as error:
            logger.warning(
                "arq worker stopped ({}); starting it again in {:.0f}s", type(error).__name__, restart_delay
            )
            # Jobs in flight need the database and the providers, not Redis: let them settle rather
            # than cancel them halfway (a cancelled one waits for its lease to expire to be resumed).
            running = [task for task in worker.tasks.values() if not task.done()]
            if running:
                await asyncio.wait(running, timeout=settings.job_timeout)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(worker.close(), timeout=restart_delay)
        await asyncio.sleep(restart_delay)
