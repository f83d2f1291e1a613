"""Plan A's runner: the arq job that runs a generation, and the arq worker that runs the jobs. `aibot
worker` runs one alone (`arq jobs.worker.WorkerSettings` too); `aibot run` embeds one when Redis answers.

The job carries only the generation id. Retries are decided by generation/execution.py: arq retries
only on `Retry`, and a plain exception or a job timeout would be final in arq, so every try ends either
in a settled generation or in `Retry(defer=...)`.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, cast

from arq import Retry
from arq.connections import ArqRedis, create_pool
from arq.constants import (
    abort_job_max_age,
    abort_jobs_ss,
    in_progress_key_prefix,
    job_key_prefix,
    result_key_prefix,
    retry_key_prefix,
)
from arq.cron import cron
from arq.utils import timestamp_ms, to_ms
from arq.worker import Worker, func
from loguru import logger
from redis.exceptions import RedisError

import metrics
from generation import lifecycle, progress
from generation.drain import CLOSE_WITHIN, INTERRUPT_WITHIN, Drain, interrupt, within
from generation.execution import Result, RetryLater, RetryPolicy, execute
from generation.limits import Limits
from generation.log_context import about_generation
from generation.places import Place
from generation.services import Services
from generation.store import Generation, GenerationStatus, Plan, as_utc, get_generation
from jobs.batched_scripts import BatchedScript
from jobs.limits import RELEASE_FUNCTION, ConcurrencyLimiter, arrivals
from jobs.queue import (
    JOB_FUNCTION,
    RECONCILE_TIMEOUT,
    TAKE_FUNCTION,
    WAKE_SWEEP_TIMEOUT,
    ArqQueue,
    EnqueuedHere,
    deserialize,
    redis_settings_for,
    serialize,
)
from jobs.reconciler import reconcile_job
from settings import Settings

# When the sweep looks for lines with room (every 5 s): a lost wake costs a waiter at most that.
WAKE_SWEEP_SECONDS = set(range(0, 60, 5))

# The workers that take jobs from a queue, by queue name: a sorted set of worker names scored by
# until when their last look tells that they look (`PromptWorker.places`).
LOOKING_PREFIX = "aibot:looking:"

# How long after a job last had to wait for a slot the worker records no claims for its jobs.
LINES_FORM_WITHIN = 10.0

# How often a full worker looks (its looks then take no job: they tell the others it is there and
# read the jobs asked to abort), where one with room looks every poll_delay: a look is a round trip,
# and in a burst a full worker's, every 20 ms, were about a sixth of Plan A's trips to Redis.
FULL_LOOK_EVERY = 0.1

# A try must end (settle or ask for a retry) before arq's job timeout cancels it: keep a margin.
TIMEOUT_MARGIN = 20.0


async def run_generation(ctx: dict[str, Any], generation_id: str) -> str:
    services: Services = ctx["services"]
    # Read as the job started (`_follow_the_job`), or here when the job was run otherwise.
    generation: Generation | None = ctx.pop(_READ_AT_START, None)
    if generation is None or generation.id != generation_id:
        generation = await get_generation(services.db, generation_id)
    if generation is None:
        return "unknown generation"
    with about_generation(generation):
        await services.intake_first.wait_turn()
        return await _run_try(ctx, services, generation)


async def _run_try(ctx: dict[str, Any], services: Services, generation: Generation) -> str:
    settings = services.settings
    generation_id = generation.id
    job_try: int = ctx.get("job_try", 1)
    provider = services.catalog.provider_of(generation.model)
    limiter = _limiter(ctx, settings)
    # Its slots asked for by its enqueue (`_follow_the_job`): the limiter's answer then, not asked again.
    slots_answer: list[Any] | None = ctx.pop(_SLOTS_AT_ENQUEUE, None)
    if generation.plan != Plan.A:
        # Its enqueue looked failed, so it moved to Plan B, yet the job reached Redis: not ours. The
        # enqueue may have taken its slots meanwhile (Plan B's are in its process): given back.
        await _release(ctx, limiter, generation, provider)
        return "on Plan B"
    # Recorded claimed for this try (`_follow_the_job`): its run claims nothing, unless it waits.
    claimed: lifecycle.Claim | None = ctx.pop(_CLAIMED, None)
    if not GenerationStatus(generation.status).is_final:
        arrival = as_utc(generation.created_at).timestamp()
        try:
            if slots_answer is not None:
                refusal = limiter.refusal(slots_answer, generation.user_id, provider)
            else:
                refusal = await limiter.acquire(generation.id, generation.user_id, provider, arrival=arrival)
        except RedisError as error:  # Redis went away under this job: come back when it may be back
            metrics.DEFERRALS.labels(generation.kind, Plan.A.value, "redis_unavailable").inc()
            await _unclaim(services, claimed, ctx)
            raise Retry(defer=2) from error
        if refusal is not None:
            await _unclaim(services, claimed, ctx)
            logger.debug("waits its turn: {} is full", refusal.limit)
            # The per-minute window of creates, or a line for a slot (named by scope, never by user).
            cause = "create_rate" if refusal.place is None else "slot_full"
            metrics.DEFERRALS.labels(generation.kind, Plan.A.value, cause).inc()
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
            claimed=claimed,
            # The same places as Plan B's runs in this process: the worker's WORKER_MAX_JOBS jobs
            # hold their arq slots, but only as many work at once as the event loop keeps up with.
            working=Place(services.working),
        )
    except RetryLater as retry:
        raise Retry(defer=retry.delay) from retry.cause  # still in flight: it keeps its slots
    # Done, failed or cancelled here: it is final. Not claimed: someone else may still run it.
    if result is not Result.not_claimed or await _is_final(services, generation_id):
        await _release(ctx, limiter, generation, provider)
    return result.value


async def _unclaim(services: Services, claimed: lifecycle.Claim | None, ctx: dict[str, Any]) -> None:
    """A generation recorded claimed for this try, which waits instead: queued again, so that the try
    that runs it claims it (the lease would hold it from every other try until it expired)."""
    if claimed is None:
        return
    try:
        await lifecycle.unclaim(services.db, claimed.generation.id, _lease_owner(ctx))
    except Exception as error:  # its lease expires on its own, and a later try claims it then
        logger.warning("could not give back its claim: {!r}", error)


async def _release(
    ctx: dict[str, Any], limiter: ConcurrencyLimiter, generation: Generation, provider: str
) -> None:
    """Give a settled generation's slots back. In a `PromptWorker` they go with the job's end, in its
    trip to Redis (`PromptWorker.finish_job`), where they were a trip of their own before it; a job
    run otherwise gives them back now."""
    releases: dict[str, tuple[list[str], list[str | int]]] | None = ctx.get(_RELEASE_AT_FINISH)
    if releases is not None and ctx.get("job_id") == generation.id:
        releases[generation.id] = limiter.release_call(generation.id, generation.user_id, provider)
        return
    try:
        await _wake(ctx, await limiter.release(generation.id, generation.user_id, provider))
    except RedisError as error:  # the slots expire on their own; the generation is settled
        logger.warning("could not free its slots: {!r}", error)


# What `_follow_the_job` leaves in a job's ctx: the generation it read, for the job to use rather
# than read again, and the log context it set, for `_stop_following` to end.
_READ_AT_START = "generation_read_at_start"
_LOG_CONTEXT = "log_context"
# In a job's ctx: its generation as recorded claimed for it (`_follow_the_job`), for its run.
_CLAIMED = "claimed_at_record"
# In a job's ctx: the limiter's answer as its enqueue asked for its slots (`_follow_the_job`), for its run.
_SLOTS_AT_ENQUEUE = "slots_at_enqueue"
# In the worker's ctx when its process enqueues jobs too (`aibot run`'s embedded worker).
_ENQUEUED_HERE = "enqueued_here"
# In the worker's ctx: its limiter, one for all its jobs rather than one built by each job.
_LIMITER = "limiter"
# In a PromptWorker's ctx: the slots its settled jobs give back as they end (by job id: the keys and
# arguments of the limiter's release).
_RELEASE_AT_FINISH = "release_at_finish"


async def _follow_the_job(ctx: dict[str, Any]) -> None:
    """arq's on_job_start. arq awaits it in the task that then runs the whole job (not in a task of
    its own), so the generation's fields set here stay for that task: arq's own lines about the job
    ("→ started", "↻ retrying", "← done") carry them like the job's own lines, and the task, which
    ends with the job, takes them to no other job. A job's id is its generation's id; a cron job's
    is not one. The generation is read, unless this process just enqueued it (`EnqueuedHere`)."""
    job_id = str(ctx.get("job_id", ""))
    if not _is_generation_id(job_id):
        return
    enqueued_here: EnqueuedHere | None = ctx.get(_ENQUEUED_HERE)
    generation = None
    taken = _TAKEN_AT_ENQUEUE.get()
    if taken is not None and taken.job_id == job_id and ctx.get("job_try", 1) == 1:
        ctx[_SLOTS_AT_ENQUEUE] = taken.slots
    claimed = None if taken is None else taken.claimed
    if claimed is not None and claimed.generation.id == job_id and _claimed_for(claimed, ctx):
        ctx[_CLAIMED] = claimed  # recorded claimed for this try: no claim of its own
        generation = claimed.generation
    elif enqueued_here is not None and ctx.get("job_try", 1) == 1:
        generation = enqueued_here.take(job_id)
    try:
        if generation is None:
            generation = await get_generation(ctx["services"].db, job_id)
    except Exception:  # the job's own read will report it; its lines carry the id at least
        generation = None
    context = contextlib.ExitStack()
    if generation is None:
        context.enter_context(logger.contextualize(generation=job_id, plan=Plan.A.value))
    else:
        ctx[_READ_AT_START] = generation
        context.enter_context(about_generation(generation))
    ctx[_LOG_CONTEXT] = context


def _claimed_for(claimed: lifecycle.Claim, ctx: dict[str, Any]) -> bool:
    """Whether a generation recorded claimed is this try's: recorded for its first try, by this worker."""
    return ctx.get("job_try", 1) == 1 and claimed.generation.lease_owner == _lease_owner(ctx)


async def _stop_following(ctx: dict[str, Any]) -> None:
    """arq's after_job_end, in the same task: the job's lines are all written."""
    context: contextlib.ExitStack | None = ctx.pop(_LOG_CONTEXT, None)
    if context is not None:
        context.close()


async def _is_final(services: Services, generation_id: str) -> bool:
    settled = await get_generation(services.db, generation_id)
    return settled is not None and GenerationStatus(settled.status).is_final


def _is_generation_id(job_id: str) -> bool:
    return len(job_id) == 32 and all(character in "0123456789abcdef" for character in job_id)


async def _wake(ctx: dict[str, Any], arrivals: Mapping[str, float]) -> None:
    """Run now the deferred jobs of generations a slot was freed for (first in their lines)."""
    if arrivals:
        await ArqQueue(ctx["redis"]).wake_in_order(arrivals)


async def wake_waiting_job(ctx: dict[str, Any]) -> int:
    """arq cron: wake the first in every line whose limit has room (slots that expired with a dead
    worker, a wake lost as its job was being deferred); a cheap look at a few Redis keys."""
    waiting = await _limiter(ctx, ctx["services"].settings).waking_heads()
    await _wake(ctx, waiting)
    return len(waiting)


def _limiter(ctx: dict[str, Any], settings: Settings) -> ConcurrencyLimiter:
    """The worker's (PromptWorker.main puts it in the worker's ctx, which arq copies into each job's),
    or one made here on the job's Redis pool (arq puts it in ctx["redis"]) for a job run otherwise."""
    limiter: ConcurrencyLimiter | None = ctx.get(_LIMITER)
    if limiter is None:
        limiter = ctx[_LIMITER] = new_limiter(ctx["redis"], settings)
    return limiter


def new_limiter(redis: ArqRedis, settings: Settings) -> ConcurrencyLimiter:
    limits = Limits.from_settings(settings)
    # Long enough to outlast a deferred retry or a wait between looks at the provider.
    slot_ttl = settings.job_timeout + settings.retry_backoff_cap + settings.long_wait_poll + 30
    return ConcurrencyLimiter(redis, limits, slot_ttl)


# arq counts every run of a job as a try, waits included (a training is looked at every few seconds
# for hours); failures are counted in the database instead, so arq's own limit only has to be out of reach.
ARQ_MAX_TRIES = 100_000


async def run_generation_handing_back(ctx: dict[str, Any], generation_id: str) -> str:
    """The job arq runs: `run_generation`. Interrupted (a stopping worker hands its jobs back, arq's
    job timeout, a lost Redis connection), it first gives the generation's lease back, so that the
    runner that takes the job next claims it at once instead of after the lease expires. A paid call
    in progress has been journaled by then (generation/steps.py)."""
    try:
        return await run_generation(ctx, generation_id)
    except asyncio.CancelledError:
        services: Services = ctx["services"]
        try:
            await within(INTERRUPT_WITHIN, lifecycle.release(services.db, generation_id, _lease_owner(ctx)))
        except Exception as error:  # its lease expires on its own
            logger.bind(generation=generation_id, plan="A").warning("lease not released: {!r}", error)
        raise


def _lease_owner(ctx: dict[str, Any]) -> str:
    """Whom `run_generation` claims a generation for: this worker, this try of the job."""
    return f"{ctx['worker_id']}:{ctx.get('job_try', 1)}"


def worker_options(settings: Settings) -> dict[str, Any]:
    """An arq worker's options (keyword arguments of arq's `Worker`), read from settings when a worker
    is built, never at import. Jobs find the process's services in ctx["services"]."""
    seconds = set(range(0, 60, settings.reconcile_every))
    return {
        "functions": [
            func(
                run_generation_handing_back,
                name=JOB_FUNCTION,
                max_tries=ARQ_MAX_TRIES,
                timeout=settings.job_timeout,
            )
        ],
        "cron_jobs": [
            cron(
                reconcile_job,
                name="reconcile",
                second=seconds,
                run_at_startup=True,
                timeout=RECONCILE_TIMEOUT,
            ),
            cron(
                wake_waiting_job,
                name="wake-waiting",
                second=WAKE_SWEEP_SECONDS,
                timeout=WAKE_SWEEP_TIMEOUT,
            ),
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
        "on_job_start": _follow_the_job,
        "after_job_end": _stop_following,
        # Under arq's own command (its signal handlers): on SIGTERM it stops taking jobs, waits this
        # long for the running ones, then interrupts them once. `aibot` drains with SupervisedWorker.
        "job_completion_wait": max(1, round(settings.drain_timeout)),
    }


# KEYS: the job's in-progress key, the queue, the job's key, its retry count's key, the set of jobs
# asked to abort. ARGV: the job's id, now (ms), the in-progress mark's time to live (ms), 1 when the
# worker heeds aborts. `take`'s answer.
_TAKE = (
    TAKE_FUNCTION
    + """
return take(KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], ARGV[1], ARGV[2], ARGV[3], ARGV[4])
"""
)
# A worker's look at the queue, its takes and its read of the jobs asked to abort in one script. KEYS:
# the queue, the set of jobs asked to abort, the workers looking. ARGV: now (ms), where to start
# reading the queue and how many to read, how many may be taken (the places free), the in-progress
# mark's time to live (ms), 1 when the worker heeds aborts, 1 when it reads the jobs asked to abort,
# the score from which those are forgotten, then arq's prefixes of the in-progress, job and retry
# keys, then the worker's name and until when (ms) its look tells that it looks. The due jobs are
# read as arq's look reads them, and taken in their order (`take`) until the places are filled; the
# keys of each are made here from its id, as arq makes them. The worker is noted among the workers
# looking (a sorted set scored by until when, those past it taken off). Answers the jobs taken, each
# as its id then `take`'s answer, the jobs asked to abort, and how many other workers look.
_LOOK = (
    TAKE_FUNCTION
    + """
local due = redis.call('zrangebyscore', KEYS[1], '-inf', ARGV[1], 'LIMIT', ARGV[2], ARGV[3])
local places = tonumber(ARGV[4])
local taken = {}
for _, id in ipairs(due) do
  if #taken >= places then break end
  local answer = take(
    ARGV[9] .. id, KEYS[1], ARGV[10] .. id, ARGV[11] .. id, KEYS[2], id, ARGV[1], ARGV[5], ARGV[6]
  )
  if answer then taken[#taken + 1] = {id, answer} end
end
local aborts = {}
if ARGV[7] == '1' then
  aborts = redis.call('zrange', KEYS[2], 0, -1)
  redis.call('zremrangebyscore', KEYS[2], ARGV[8], '+inf')
end
redis.call('zremrangebyscore', KEYS[3], '-inf', ARGV[1])
redis.call('zadd', KEYS[3], ARGV[13], ARGV[12])
redis.call('pexpire', KEYS[3], 60000)
return {taken, aborts, redis.call('zcard', KEYS[3]) - 1}
"""
)


# KEYS: the job's in-progress key, its result's key, its retry count's key, the job's key, the set of
# jobs asked to abort, the queue. ARGV: the job's id; how long its in-progress mark stays (ms; empty:
# deleted); 1 when the job is finished; 1 when it has a result; the result; the result's time to live
# (ms; empty: forever); what to add to its score when it is not finished (empty: nothing). The writes
# of arq's `finish_job`, in its order, atomic as its MULTI/EXEC is.
_FINISH_WRITES = """
local deletes = {}
if ARGV[2] == '' then table.insert(deletes, KEYS[1]) else redis.call('pexpire', KEYS[1], ARGV[2]) end
if ARGV[3] == '1' then
  if ARGV[4] == '1' then
    if ARGV[6] == '' then
      redis.call('set', KEYS[2], ARGV[5])
    else
      redis.call('set', KEYS[2], ARGV[5], 'px', ARGV[6])
    end
  end
  table.insert(deletes, KEYS[3])
  table.insert(deletes, KEYS[4])
  redis.call('zrem', KEYS[5], ARGV[1])
  redis.call('zrem', KEYS[6], ARGV[1])
elseif ARGV[7] ~= '' then
  redis.call('zincrby', KEYS[6], ARGV[7], ARGV[1])
end
if #deletes > 0 then redis.call('del', unpack(deletes)) end
"""
_FINISH = _FINISH_WRITES + "return 1\n"
# The same, then the settled generation's slots freed (jobs/limits.py's release): KEYS and ARGV go on
# with the release's keys (from the 7th) and arguments (from the 8th); answers the waiters to wake.
_FINISH_AND_RELEASE = (
    RELEASE_FUNCTION
    + _FINISH_WRITES
    + """
local keys, argv = {}, {}
for i = 7, #KEYS do keys[#keys + 1] = KEYS[i] end
for i = 8, #ARGV do argv[#argv + 1] = ARGV[i] end
return release(keys, argv)
"""
)


class PromptWorker(Worker):
    """arq's worker, which looks for due jobs every `poll_delay`, and also at once when `nudge`d while
    idle: the worker `aibot run` embeds is nudged by its own front's enqueue, so a job it enqueued
    starts now rather than at the next look (half a poll later on average)."""

    def __init__(self, *, places_alone: int = 0, **options: Any) -> None:
        super().__init__(**options)
        # Its places (`places`): arq's `max_jobs` while another worker takes jobs from the queue, so
        # that a burst is shared by whichever has room first, but `places_alone` while none does
        # (nobody else would take a job sooner; this process's runs share its event loop's time,
        # generation/pace.py). Its looks keep to `max_jobs`: the places past them are for the jobs
        # its own front enqueues (`hold_place`), which come with their slots and their claims.
        self.places_alone = max(self.max_jobs, places_alone)
        self.sem = asyncio.BoundedSemaphore(self.places_alone + 1)
        self._others_look = True  # until its first look tells
        # How long a look tells others that it looks: a worker with room looks every poll_delay, a
        # full one every FULL_LOOK_EVERY at least.
        self._looks_within_ms = max(1000, int(self.poll_delay_s * 5000))
        self._looked_at = float("-inf")  # when its last look left (the loop's clock)
        # Its runs claim generations in its name (`_lease_owner`); `worker_options` names it.
        self.ctx.setdefault("worker_id", f"worker-{uuid.uuid4().hex[:8]}")
        self._nudged = asyncio.Event()
        self._running = False
        # Places a look on its way may fill with what it takes (`_look`): no enqueue holds them.
        self._promised_to_look = 0
        # Registered on the pool at the first use (arq opens it in `main`).
        self._take: BatchedScript | None = None
        self._look_script: BatchedScript | None = None
        self._finish: BatchedScript | None = None
        self._finish_and_release: BatchedScript | None = None
        self._releases: dict[str, tuple[list[str], list[str | int]]] = {}
        self.ctx[_RELEASE_AT_FINISH] = self._releases

    def places(self) -> int:
        """How many jobs it may hold at once: `max_jobs` while another worker takes jobs from the
        queue (as its last look found), else `places_alone`. Its looks take jobs only while it holds
        fewer than `max_jobs`: a job from the queue costs its look, its claim and its slots whichever
        worker takes it, and more of them at once only crowd the process (a lone `aibot worker`
        taking every job of a burst of 400 ran it 6-15 % slower on PostgreSQL)."""
        return self.max_jobs if self._others_look else self.places_alone

    def nudge(self) -> None:
        # Only an idle worker: a busy one looks again as its jobs end, and a burst of enqueues must
        # not turn into a look per enqueue while it works.
        if not self.job_tasks:
            self._nudged.set()

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        """arq's `start_jobs`, but the due jobs are taken in one trip to Redis where arq takes each in
        four.

        arq takes a due job under WATCH of its in-progress key: EXISTS of that key, ZSCORE of the job
        in the queue, then the key set in MULTI/EXEC, each a round trip, one job after the other.
        `_TAKE` makes the same checks and the same write, atomic as a script is; the jobs this look
        found room for are taken together (jobs/batched_scripts.py), then started in the queue's order."""
        # A job runs until it ends still in the queue, so each look finds the jobs running here again:
        # those are known to be in progress (arq would ask Redis, a trip for nothing each time).
        waiting = [job_id for job_id_b in job_ids if not self._running_here(job_id := job_id_b.decode())]
        while waiting:
            taking: list[str] = []
            for job_id in waiting:
                # arq's count of the places: its semaphore has one more than the most places, so this
                # never waits; a place is held from here until the job ends or was not taken.
                await self.sem.acquire()
                if self.job_counter >= self.max_jobs:
                    self.sem.release()
                    break
                self.job_counter += 1
                taking.append(job_id)
            if not taking:  # every place is busy: the rest wait for a later look
                break
            waiting = waiting[len(taking) :]
            failure = await self._take_and_start(taking)
            if failure is not None:  # as arq's would: the worker's loop hears of it
                raise failure

    def _running_here(self, job_id: str) -> bool:
        task = self.tasks.get(job_id)
        return task is not None and not task.done()

    async def _take_and_start(self, taking: list[str]) -> BaseException | None:
        """Take these jobs, whose places are held, in one trip; start those taken, in this order, and
        give back the places of the others. Redis's error, if it failed to answer."""
        if self._take is None:
            self._take = BatchedScript(self.pool, _TAKE)
        now = timestamp_ms()
        in_progress_ms = int(self.in_progress_timeout_s * 1000)
        heeds_aborts = 1 if self.allow_abort_jobs else 0
        calls = [
            (
                [
                    in_progress_key_prefix + job_id,
                    self.queue_name,
                    job_key_prefix + job_id,
                    retry_key_prefix + job_id,
                    abort_jobs_ss,
                ],
                [job_id, now, in_progress_ms, heeds_aborts],
            )
            for job_id in taking
        ]
        try:
            answers = await self._take.many(calls)
        except BaseException:  # cancelled (the worker stops): none starts, every place is free again
            self.job_counter -= len(taking)
            for _ in taking:
                self.sem.release()
            raise
        failure: BaseException | None = None
        for job_id, answer in zip(taking, answers, strict=True):
            if answer is None or isinstance(answer, BaseException):
                self._release_sem_dec_counter_on_complete()  # its place given back
                if answer is None:
                    logger.debug("job {} already running elsewhere", job_id)
                else:
                    failure = failure or answer
                continue
            self._start(job_id, answer)
        return failure

    async def hold_place(self) -> _HeldPlace | None:
        """For this process's enqueue (`ArqQueue.worker_here`): a place, held, when this worker runs,
        takes jobs and has one free; the enqueue then takes its job for it in its own trip."""
        if not (self._running and self.allow_pick_jobs):
            return None
        if self.job_counter + self._promised_to_look >= self.places():
            return None
        await self._hold_place()
        in_progress_ms = int(self.in_progress_timeout_s * 1000)
        # Whom its job's first try claims as, which its generation may be recorded claimed by; but
        # not while jobs here wait for slots: a claim recorded for a job that then waits is undone
        # (`_unclaim`), a write more for every generation in a long line.
        limiter: ConcurrencyLimiter | None = self.ctx.get(_LIMITER)
        lines_form = limiter is not None and time.monotonic() - limiter.last_refusal < LINES_FORM_WITHIN
        owner = None if lines_form else _lease_owner({**self.ctx, "job_try": 1})
        return _HeldPlace(self, self.queue_name, in_progress_ms, self.allow_abort_jobs, owner)

    async def _hold_place(self) -> None:
        """Hold one of the worker's places (arq's count, and its semaphore, which has one more than
        the most places, so this never waits while a place is free) until its job ends."""
        await self.sem.acquire()
        self.job_counter += 1

    def _start(self, job_id: str, taken: list[Any], at_enqueue: _TakenAtEnqueue | None = None) -> None:
        """Run a job taken (`take`'s answer), in the place held for it; `at_enqueue`: what its enqueue
        here took with it (`hold_place`)."""
        score, job, job_try, aborted = taken
        read = _ReadAtTake([job or None, job_try, True, aborted])
        task = self.loop.create_task(self._run_job_read(job_id, int(float(score)), read, at_enqueue))
        task.add_done_callback(lambda _: self._release_sem_dec_counter_on_complete())
        self.tasks[job_id] = task

    async def _look(self, reads_aborts: bool) -> list[bytes]:
        """Look at the queue and take the due jobs there are places for, in one trip (`_LOOK`), where
        arq reads the due jobs in one and a later trip takes them; start those taken. The jobs asked
        to abort, when `reads_aborts`."""
        if self._look_script is None:
            self._look_script = BatchedScript(self.pool, _LOOK)
        # The places free now are promised to this look until its answer comes: the worker's loop
        # makes one look at a time, and an enqueue here (`hold_place`) takes only places beyond them.
        # 0 when it is full: it reads no job, but tells the others it is there and hears whether
        # they still are.
        places = max(min(self.max_jobs - self.job_counter, self.queue_read_limit), 0)
        arguments = [
            timestamp_ms(),
            self._queue_read_offset,
            self.queue_read_limit if places else 0,
            places,
            int(self.in_progress_timeout_s * 1000),
            1 if self.allow_abort_jobs else 0,
            1 if reads_aborts else 0,
            timestamp_ms() + abort_job_max_age,
            in_progress_key_prefix,
            job_key_prefix,
            retry_key_prefix,
        ]
        arguments += [self.ctx["worker_id"], timestamp_ms() + self._looks_within_ms]
        keys = [self.queue_name, abort_jobs_ss, LOOKING_PREFIX + self.queue_name]
        self._promised_to_look = places
        self._looked_at = self.loop.time()
        try:
            taken, abort_job_ids, others = await self._look_script(keys=keys, args=arguments)
        finally:
            self._promised_to_look = 0
        self._others_look = int(others) > 0
        for job_id, answer in taken:
            await self._hold_place()
            self._start(job_id.decode(), answer)
        return list(abort_job_ids)

    async def _run_job_read(
        self, job_id: str, score: int, read: _ReadAtTake, at_enqueue: _TakenAtEnqueue | None = None
    ) -> None:
        """arq's `run_job`, its first read of the job answered by what the take read (`pool`); what
        its enqueue here took with it, if it did, for its start (`_follow_the_job`)."""
        _READ_AT_TAKE.set(read)
        _TAKEN_AT_ENQUEUE.set(at_enqueue)
        await self.run_job(job_id, score)

    @property
    def pool(self) -> ArqRedis:
        """arq's pool; but where a job starts (`_run_job_read`), the read arq's `run_job` makes first
        (a MULTI/EXEC: the job's data, its try counted, its mark of abort taken off) is answered by
        what the take read in the same trip (`_TAKE`), once: a round trip fewer for each job."""
        read = _READ_AT_TAKE.get()
        if read is not None:
            _READ_AT_TAKE.set(None)
            return cast(ArqRedis, read)
        return super().pool

    async def finish_job(
        self,
        job_id: str,
        finish: bool,
        result_data: bytes | None,
        result_timeout_s: float | None,
        keep_result_forever: bool,
        incr_score: int | None,
        keep_in_progress: float | None,
    ) -> None:
        """arq's `finish_job` as one script (`_FINISH`, the same writes), so that the jobs ending at
        once end in one round trip (jobs/batched_scripts.py), where each sent a MULTI/EXEC of its own.
        A settled generation's slots are freed in it too (`_release`), and the waiters first in line
        for them woken."""
        release = self._releases.pop(job_id, None)
        keys = [
            in_progress_key_prefix + job_id,
            result_key_prefix + job_id,
            retry_key_prefix + job_id,
            job_key_prefix + job_id,
            abort_jobs_ss,
            self.queue_name,
        ]
        expire = None if keep_result_forever else result_timeout_s
        arguments: list[str | bytes | int] = [
            job_id,
            "" if keep_in_progress is None else to_ms(keep_in_progress),
            1 if finish else 0,
            1 if result_data else 0,
            result_data or b"",
            "" if expire is None else to_ms(expire),
            incr_score or "",
        ]
        if release is None:
            if self._finish is None:
                self._finish = BatchedScript(self.pool, _FINISH)
            await self._finish(keys=keys, args=arguments)
            return
        if self._finish_and_release is None:
            self._finish_and_release = BatchedScript(self.pool, _FINISH_AND_RELEASE)
        release_keys, release_arguments = release
        wake = await self._finish_and_release(keys=keys + release_keys, args=arguments + release_arguments)
        try:
            await _wake(self.ctx, arrivals(wake))
        except RedisError as error:  # the sweep (`wake_waiting_job`) wakes them within seconds
            logger.warning("could not wake the waiters for its slots: {!r}", error)

    async def _poll_iteration(self) -> None:
        """arq's look at the queue, but with places free the due jobs are read and taken, and with
        jobs running here the jobs asked to abort read, in one trip to Redis (`_look`), where arq
        makes three, one after the other (a busy worker looks every `poll_delay`, 20 ms by default).
        A full worker looks too, for no job (in the same trip as its read of the jobs asked to
        abort): to tell the others it still takes jobs, and to hear whether they do; but only every
        `FULL_LOOK_EVERY` (a job asked to abort is cancelled that much later at most). One that
        takes no more (draining) makes arq's look, and the others soon count it gone."""
        if self.burst or not self.allow_pick_jobs:
            await super()._poll_iteration()
            return
        full = self.job_counter >= self.max_jobs
        if not full or self.loop.time() - self._looked_at >= FULL_LOOK_EVERY:
            abort_job_ids = await self._look(reads_aborts=self.allow_abort_jobs and bool(self.job_tasks))
            await self._cancel_these(abort_job_ids)
        # The rest of arq's look, as it does it.
        for job_id, task in list(self.tasks.items()):
            if task.done():
                del self.tasks[job_id]
                task.result()  # a failure of `run_job` itself reaches the worker's loop
        await self.heart_beat()

    async def _cancel_aborted_jobs(self) -> None:
        """arq's: the jobs asked to abort, read, and those running here cancelled. arq asks at every
        look at the queue; with none running here there is nothing to cancel (a job asked to abort
        before it starts is found by arq's `run_job`), so an idle worker does not ask."""
        if not self.job_tasks:
            return
        async with self.pool.pipeline(transaction=True) as pipe:
            _read_aborted(pipe)
            abort_job_ids, _ = await pipe.execute()
        await self._cancel_these(abort_job_ids)

    async def _cancel_these(self, abort_job_ids: list[bytes]) -> None:
        """Cancel those of these jobs asked to abort that run here, and take them off the set of jobs
        asked to abort (as arq's `_cancel_aborted_jobs` does with what it read)."""
        aborted = {job_id for job_id_b in abort_job_ids if (job_id := job_id_b.decode()) in self.job_tasks}
        for job_id in aborted:
            self.job_tasks[job_id].cancel()
        if aborted:
            self.aborting_tasks.update(aborted)
            await self.pool.zrem(abort_jobs_ss, *aborted)

    async def main(self) -> None:
        # arq's own `main`, but for the wait between looks at the queue (arq sleeps a fixed step).
        if self._pool is None:
            self._pool = await create_pool(
                self.redis_settings,
                job_deserializer=self.job_deserializer,
                job_serializer=self.job_serializer,
                default_queue_name=self.queue_name,
                expires_extra_ms=self.expires_extra_ms,
            )
        self.ctx["redis"] = self.pool
        services: Services | None = self.ctx.get("services")
        if services is not None:  # each job's ctx is a copy of this one: one limiter for them all
            self.ctx[_LIMITER] = new_limiter(self.pool, services.settings)
        if self.on_startup:
            await self.on_startup(self.ctx)
        self._running = True  # its pool and its jobs' ctx are ready: jobs may be started here
        try:
            while True:
                self._nudged.clear()
                await self._poll_iteration()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.poll_delay_s):  # no task of its own, as wait_for's
                        await self._nudged.wait()
        finally:
            self._running = False  # stopped (its Redis lost, or closing): it starts no job more


@dataclass
class _HeldPlace:
    """A place `PromptWorker.hold_place` holds for a job this process enqueues (jobs/queue.py's
    `HeldPlace`): started in it once taken, or given back."""

    worker: PromptWorker
    queue_name: str
    in_progress_ms: int
    heeds_aborts: bool
    owner: str | None

    def slots_call(self, generation: Generation) -> tuple[list[str], list[str | int]] | None:
        limiter: ConcurrencyLimiter | None = self.worker.ctx.get(_LIMITER)
        services: Services | None = self.worker.ctx.get("services")
        if limiter is None or services is None:
            return None
        provider = services.catalog.provider_of(generation.model)
        arrival = as_utc(generation.created_at).timestamp()
        return limiter.acquire_call(generation.id, generation.user_id, provider, arrival=arrival)

    def start(
        self, job_id: str, taken: list[Any], claimed: lifecycle.Claim | None, slots: list[Any] | None
    ) -> None:
        self.worker._start(job_id, taken, _TakenAtEnqueue(job_id, claimed, slots))

    def give_back(self) -> None:
        self.worker._release_sem_dec_counter_on_complete()


@dataclass(frozen=True)
class _TakenAtEnqueue:
    """What an enqueue here took with a job for its first try: its generation as recorded claimed for
    it (`claimed`), and the limiter's answer as it asked for the job's slots (`slots`)."""

    job_id: str
    claimed: lifecycle.Claim | None
    slots: list[Any] | None


# In a job's task as it starts (`PromptWorker._run_job_read`): what the take read for arq's `run_job`.
# In a job's task as it starts: what its enqueue here took with it (its first try).
_TAKEN_AT_ENQUEUE: contextvars.ContextVar[_TakenAtEnqueue | None] = contextvars.ContextVar(
    "taken_at_enqueue", default=None
)
_READ_AT_TAKE: contextvars.ContextVar[_ReadAtTake | None] = contextvars.ContextVar(
    "read_at_take", default=None
)


class _ReadAtTake:
    """Stands in for the pool, for arq's `run_job`'s first read only: `pipeline()` gives itself, the
    commands queued on it are noted, and `execute()` answers them with what the take read, in arq's
    order (GET of the job, INCR and EXPIRE of its try, ZREM of its mark of abort when aborts are
    heeded). Any other command is a change of arq's and fails loudly."""

    _ORDER = ("get", "incr", "expire", "zrem")

    def __init__(self, answers: list[Any]) -> None:
        self._answers = dict(zip(self._ORDER, answers, strict=True))
        self._asked: list[str] = []

    def pipeline(self, transaction: bool = True) -> _ReadAtTake:
        return self

    async def __aenter__(self) -> _ReadAtTake:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        return None

    def _ask(self, command: str) -> Callable[..., _ReadAtTake]:
        def queue(*args: Any, **kwargs: Any) -> _ReadAtTake:
            self._asked.append(command)
            return self

        return queue

    def __getattr__(self, command: str) -> Callable[..., _ReadAtTake]:
        if command not in self._ORDER:
            raise AttributeError(f"arq's first read of a job asked {command!r}: not read with the take")
        return self._ask(command)

    async def execute(self) -> list[Any]:
        return [self._answers[command] for command in self._asked]


def _read_aborted(pipe: Any) -> None:
    """arq's two commands of `_cancel_aborted_jobs`: the jobs asked to abort, and those asked too long
    ago forgotten."""
    pipe.zrange(abort_jobs_ss, start=0, end=-1)
    pipe.zremrangebyscore(abort_jobs_ss, min=timestamp_ms() + abort_job_max_age, max=float("inf"))


def build_worker(
    settings: Settings, services: Services, enqueued_here: EnqueuedHere | None = None
) -> PromptWorker:
    options = worker_options(settings)
    options["ctx"]["services"] = services
    if enqueued_here is not None:
        options["ctx"][_ENQUEUED_HERE] = enqueued_here
    return PromptWorker(**options, places_alone=settings.limit_overall, handle_signals=False)


class SupervisedWorker:
    """An arq worker for the life of a process (`aibot worker`, and the one `aibot run` embeds), built
    anew whenever it stops on its own: arq's worker exits when its Redis connection is lost, and a
    Redis restart must not end Plan A for good.

    It stops gracefully (generation/drain.py): `stop_taking_jobs` at once, then `drain` lets running
    jobs end until the drain is over and interrupts the rest. An interrupted job gives its lease back
    (`run_generation_handing_back`) and arq puts it back in the queue no longer marked as running, so
    another worker, or the next start, runs it at once. Then the worker and its Redis pool close."""

    def __init__(self, settings: Settings, services: Services, restart_delay: float = 2.0) -> None:
        self.settings = settings
        self.services = services
        self.restart_delay = restart_delay
        self.worker: PromptWorker | None = None
        self._stopping = asyncio.Event()
        self._handed_back = asyncio.Event()
        self._ended = asyncio.Event()
        # The generations this process enqueues, when it does (`ArqQueue.enqueued_here`), for the
        # jobs of its worker to take: kept across the workers built anew.
        self.enqueued_here = EnqueuedHere()

    async def run(self) -> None:
        """Run workers until `drain` (or a cancellation) stops them."""
        try:
            while not self._stopping.is_set():
                worker = self.worker = build_worker(self.settings, self.services, self.enqueued_here)
                try:
                    await worker.async_run()
                except asyncio.CancelledError:
                    if not self._stopping.is_set() or _cancelled_itself():
                        raise  # not `drain` ending the worker's loop
                except Exception as error:
                    if not self._stopping.is_set():
                        logger.warning(
                            "arq worker stopped ({}); starting it again in {:.0f}s",
                            type(error).__name__,
                            self.restart_delay,
                        )
                    await self._let_jobs_settle(worker)
                finally:
                    await _close(worker)
                if not self._stopping.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stopping.wait(), timeout=self.restart_delay)
        finally:
            self._ended.set()

    async def hold_place(self) -> _HeldPlace | None:
        """A place in the worker running now, for a job this process enqueues (`ArqQueue.worker_here`)."""
        if self.worker is None or self._stopping.is_set():
            return None
        return await self.worker.hold_place()

    def nudge(self) -> None:
        """A job was just enqueued (by this process): look for it now."""
        if self.worker is not None:
            self.worker.nudge()

    def stop_taking_jobs(self) -> None:
        self._stopping.set()
        if self.worker is not None:
            self.worker.allow_pick_jobs = False

    async def drain(self, drain: Drain) -> None:
        """Stop taking jobs, let the running ones end until the drain is over, hand the rest back to
        the queue, then end the worker (its Redis pool closes)."""
        self.stop_taking_jobs()
        worker = self.worker
        try:
            if worker is not None:
                await drain.wait(lambda: _running_jobs(worker))
                if _running_jobs(worker):
                    logger.info("handing back to the queue: {}", ", ".join(sorted(worker.job_tasks)) or "-")
                    still = await interrupt(
                        lambda: _running_jobs(worker), to_cancel=lambda: list(worker.job_tasks.values())
                    )
                    if still:
                        logger.warning("{} job(s) did not end in time after being interrupted", len(still))
        finally:
            self._handed_back.set()
            if worker is not None and worker.main_task is not None:
                worker.main_task.cancel()  # ends `run`'s worker: it closes, and no other is built
        with contextlib.suppress(TimeoutError):
            await within(CLOSE_WITHIN + INTERRUPT_WITHIN, self._ended.wait())

    async def redis_answers(self) -> bool:
        """For readiness: a worker is running and its Redis answers."""
        worker = self.worker
        if worker is None or worker.main_task is None or worker.main_task.done():
            return False
        if getattr(worker, "_pool", None) is None:
            return False
        return bool(await worker.pool.ping())

    async def _let_jobs_settle(self, worker: Worker) -> None:
        """After a lost Redis connection: jobs in flight need the database and the providers, not
        Redis, so they are let settle rather than cancelled halfway (up to a job's timeout; once the
        process stops, until `drain` has let them end or handed them back)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.job_timeout
        handed_back = asyncio.ensure_future(self._handed_back.wait())
        try:
            while (running := _running_jobs(worker)) and not handed_back.done():
                left = None if self._stopping.is_set() else deadline - loop.time()
                if left is not None and left <= 0:
                    return
                await asyncio.wait([*running, handed_back], timeout=left, return_when=asyncio.FIRST_COMPLETED)
        finally:
            handed_back.cancel()


def _running_jobs(worker: Worker) -> list[asyncio.Task[Any]]:
    return [task for task in worker.tasks.values() if not task.done()]


def _cancelled_itself() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def _close(worker: Worker) -> None:
    """Close a worker (interrupting any job still running) and its Redis pool, in bounded time."""
    try:
        await within(CLOSE_WITHIN, worker.close())
    except Exception as error:
        logger.warning("the arq worker did not close cleanly ({!r}); closing its Redis pool", error)
        pool = getattr(worker, "_pool", None)
        if pool is not None:
            with contextlib.suppress(Exception):
                await within(1.0, pool.aclose(close_connection_pool=True))
