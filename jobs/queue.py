"""Plan A's transport: an arq pool that enqueues a generation id as a job with that id."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol
from urllib.parse import unquote

import msgpack
from arq.connections import ArqRedis, RedisSettings, create_pool
from arq.constants import (
    abort_jobs_ss,
    in_progress_key_prefix,
    job_key_prefix,
    result_key_prefix,
    retry_key_prefix,
)
from arq.jobs import serialize_job
from arq.utils import timestamp_ms

from generation.lifecycle import Claim
from generation.store import Generation
from jobs.batched_scripts import BatchedScript
from jobs.limits import ACQUIRE_FUNCTION, LINES, PREFIX
from metrics import InFlight
from settings import Settings

JOB_FUNCTION = "run_generation"
# The slot every Plan A generation in flight holds (generation/limits.py names it), whatever its user
# or provider: counting it counts them all.
OVERALL_SLOT = PREFIX + "global"


# The timeouts of the worker's cron jobs (jobs/runner.py), which arq's in-progress mark also covers.
RECONCILE_TIMEOUT = 60
WAKE_SWEEP_TIMEOUT = 30


# KEYS: the job's key, its result's key, the queue. ARGV: the job key's time to live (ms), the job,
# its score (due now, ms), its id. A job already there, or its result, keeps it from a second.
_ENQUEUE = """
if redis.call('exists', KEYS[1], KEYS[2]) > 0 then return 0 end
redis.call('psetex', KEYS[1], ARGV[1], ARGV[2])
redis.call('zadd', KEYS[3], ARGV[3], ARGV[4])
return 1
"""


# The take of one job: `take(in_progress_key, queue, job_key, retry_key, abort_set, job_id, now_ms,
# in_progress_ms, heeds_aborts)`. A job already in progress, no longer queued, or not due yet is not
# taken (false). A taken one is marked in progress, then read as arq's `run_job` first reads it (its
# data, its try counted, its mark of abort taken off when aborts are heeded): answers its score (when
# it was due), its data ('' when gone), its try and whether it was asked to abort.
TAKE_FUNCTION = """
local function take(mark, queue, job_key, retry_key, abort_set, id, now, in_progress_ms, heeds_aborts)
  if redis.call('exists', mark) == 1 then return false end
  local score = redis.call('zscore', queue, id)
  if not score or tonumber(score) > tonumber(now) then return false end
  redis.call('psetex', mark, in_progress_ms, '1')
  local job = redis.call('get', job_key)
  local try = redis.call('incr', retry_key)
  redis.call('expire', retry_key, 88400)
  local aborted = 0
  if heeds_aborts == '1' then aborted = redis.call('zrem', abort_set, id) end
  return {score, job or '', try, aborted}
end
"""
# KEYS: the job's key, its result's key, the queue, its in-progress key, its retry count's key, the set
# of jobs asked to abort, then (optionally) the keys of the job's slots (jobs/limits.py's `acquire`).
# ARGV: as `_ENQUEUE`'s, then the in-progress mark's time to live (ms), 1 when the worker heeds aborts,
# then the acquire's arguments when its keys are given. `_ENQUEUE`, then the job just enqueued taken
# (`take`): its answer, or 0 when the job was there already (a worker's look finds it); with the
# slots' keys, the taken job's slots too, the acquire's answer fifth in the take's, which the job's
# run reads instead of asking for its slots itself.
_ENQUEUE_AND_TAKE = (
    TAKE_FUNCTION
    + ACQUIRE_FUNCTION
    + """
if redis.call('exists', KEYS[1], KEYS[2]) > 0 then return 0 end
redis.call('psetex', KEYS[1], ARGV[1], ARGV[2])
redis.call('zadd', KEYS[3], ARGV[3], ARGV[4])
local taken = take(KEYS[4], KEYS[3], KEYS[1], KEYS[5], KEYS[6], ARGV[4], ARGV[3], ARGV[5], ARGV[6])
if not taken or #KEYS == 6 then return taken end
local keys, argv = {}, {}
for i = 7, #KEYS do keys[#keys + 1] = KEYS[i] end
for i = 7, #ARGV do argv[#argv + 1] = ARGV[i] end
taken[5] = acquire(keys, argv)
return taken
"""
)


class HeldPlace(Protocol):
    """A place held in the worker this process embeds, for a job its enqueue takes at once."""

    queue_name: str
    in_progress_ms: int
    heeds_aborts: bool
    # Whom the job's first try claims as (generation/dispatcher.py `WorkerPlace`); None: its
    # generation is not to be recorded claimed (the worker's jobs wait for slots now).
    owner: str | None

    def slots_call(self, generation: Generation) -> tuple[list[str], list[str | int]] | None:
        """The keys and arguments of the limiter's `acquire` that take this generation's slots, for
        the enqueue that takes its job to take them too (None: the run takes them)."""

    def start(self, job_id: str, taken: list[Any], claimed: Claim | None, slots: list[Any] | None) -> None:
        """Run the job taken (`take`'s answer) in this place; `claimed`: its generation was recorded
        claimed by `owner`, and the run needs no claim of its own; `slots`: the limiter's answer as
        the enqueue asked for its slots (`slots_call`), which the run reads instead of asking."""

    def give_back(self) -> None:
        """The job was not taken: the place is free again."""


class WorkerHere(Protocol):
    async def hold_place(self) -> HeldPlace | None:
        """A place, when the worker runs, takes jobs and has one free."""


def in_progress_seconds(job_timeout: float) -> float:
    """How long arq marks a started job "in progress" (its in-progress key's time to live): the
    worker's longest job timeout, the cron jobs' included, plus 10 s, as arq's Worker computes it."""
    return max(job_timeout, RECONCILE_TIMEOUT, WAKE_SWEEP_TIMEOUT) + 10


def serialize(value: Any) -> bytes:
    # arq pickles job payloads by default; jobs carry only ids, so msgpack suffices and is safe.
    # arq also stores a failed job's exception as its result: anything msgpack cannot pack goes as text.
    return msgpack.packb(value, use_bin_type=True, default=repr)


def deserialize(raw: bytes) -> Any:
    return msgpack.unpackb(raw, raw=False)


def redis_settings(
    redis_url: str,
    connect_timeout: float,
    *,
    sentinels: Sequence[tuple[str, int]] = (),
    sentinel_master: str = "mymaster",
    tls_ca_file: str | None = None,
) -> RedisSettings:
    """arq's connection settings: REDIS_URL alone, or the master that the sentinels name (the URL then
    gives the scheme, credentials and database). rediss:// is TLS, the certificate checked."""
    settings = RedisSettings.from_dsn(redis_url)
    # arq keeps the URL's credentials percent-encoded (a password with '@' or '/' must be written so).
    settings.username = unquote(settings.username) if settings.username else None
    settings.password = unquote(settings.password) if settings.password else None
    if settings.ssl:
        # arq checks the chain but not the name by default: a certificate for any host would do.
        settings.ssl_check_hostname = True
        settings.ssl_ca_certs = tls_ca_file
    if sentinels:
        # Through Sentinel arq gives the master connections only `ssl` (no CA file, no host name
        # check) and the sentinels no TLS or password: settings.py refuses a CA file with sentinels.
        settings.host = list(sentinels)
        settings.sentinel = True
        settings.sentinel_master = sentinel_master
    # Fail fast: a dead Redis must not hold a request (the dispatcher falls back to Plan B).
    settings.conn_timeout = max(1, int(connect_timeout))
    settings.conn_retries = 0
    return settings


def redis_settings_for(settings: Settings) -> RedisSettings:
    """The one way every process reaches Redis: the queue, the worker and the limits share it."""
    return redis_settings(
        settings.redis_url,
        settings.redis_timeout,
        sentinels=settings.redis_sentinels,
        sentinel_master=settings.redis_sentinel_master,
        tls_ca_file=settings.redis_tls_ca_file,
    )


async def connect(settings: Settings) -> ArqRedis:
    pool: ArqRedis = await create_pool(
        redis_settings_for(settings),
        job_serializer=serialize,
        job_deserializer=deserialize,
    )
    await pool.ping()
    return pool


class EnqueuedHere:
    """The Plan A generations this process just recorded and enqueued, as recorded, for the worker it
    embeds (jobs/runner.py): a job's first try takes its generation from here instead of reading it
    from the database again (one read per job). What a first try needs of it does not change meanwhile
    (its user, model, kind, when it was recorded). Its status may: a cancellation made here drops it
    (`ArqQueue.stop`), and one made by another process is settled by the claim, which reads the
    status as it is (the job then ends, its slots given back). An enqueue that looked failed, after
    which the generation may move to Plan B, puts nothing here. A later try reads, and so does a job
    run by another process or taken after `MOST` newer enqueues."""

    MOST = 1024

    def __init__(self) -> None:
        self._recorded: OrderedDict[str, Generation] = OrderedDict()

    def put(self, generation: Generation) -> None:
        self._recorded[generation.id] = generation
        if len(self._recorded) > self.MOST:
            self._recorded.popitem(last=False)

    def take(self, generation_id: str) -> Generation | None:
        return self._recorded.pop(generation_id, None)

    def __len__(self) -> int:
        return len(self._recorded)


class ArqQueue:
    def __init__(self, pool: ArqRedis, timeout: float = 1.0) -> None:
        self.pool = pool
        self.timeout = timeout  # for a health look: a hung Redis must not hang /healthz or /plan
        # Told of each enqueue: the worker this process embeds, which then looks for it at once.
        self.on_enqueued: Callable[[], None] | None = None
        # That worker's, when there is one: where it takes the generations enqueued here from.
        self.enqueued_here: EnqueuedHere | None = None
        # That worker, when there is one: a job enqueued while it has a place free is taken for it in
        # the enqueue's trip, and starts there at once (no look at the queue, no trip of its own).
        self.worker_here: WorkerHere | None = None
        # Enqueues made while one is on its way go to Redis together (a burst's intakes).
        self._enqueue_script = BatchedScript(pool, _ENQUEUE)
        self._enqueue_and_take_script = BatchedScript(pool, _ENQUEUE_AND_TAKE)

    async def hold_place(self) -> HeldPlace | None:
        """A place in the worker this process embeds (`worker_here`), when it runs and has one free,
        for a job this queue's enqueue then takes for it (generation/dispatcher.py `JobQueue`)."""
        if self.worker_here is None:
            return None
        place = await self.worker_here.hold_place()
        if place is not None and place.queue_name != self.pool.default_queue_name:
            place.give_back()  # it works another queue: its jobs are not ours to take
            return None
        return place

    async def enqueue(
        self,
        generation_id: str,
        recorded: Generation | None = None,
        *,
        place: HeldPlace | None = None,
        claimed: Claim | None = None,
    ) -> bool:
        """arq's `enqueue_job(JOB_FUNCTION, generation_id, _job_id=generation_id)` in one trip to Redis.

        The job id is the generation id: a job whose key or result is still there is not enqueued
        again, so a repeated enqueue (a retried submit, the reconciler) never makes a second job. arq
        checks that under WATCH and writes in MULTI/EXEC, three round trips; the script does the
        same check and writes, atomic as a script is, in one.

        With a place held in the worker here (`place`, or one `hold_place` finds now) the same script
        takes the job for it, which starts there at once: True; and, for a generation `recorded` here,
        the job's concurrency slots too, when they are free. Otherwise, or when the job was there
        already, it waits in the queue for a worker's look: False (the place given back)."""
        now_ms = timestamp_ms()
        job = serialize_job(
            JOB_FUNCTION, (generation_id,), {}, None, now_ms, serializer=self.pool.job_serializer
        )
        keys = [
            job_key_prefix + generation_id,
            result_key_prefix + generation_id,
            self.pool.default_queue_name,
        ]
        arguments: list[Any] = [self.pool.expires_extra_ms, job, now_ms, generation_id]
        if place is None:
            place = await self.hold_place()
        if place is None:
            await self._enqueue_script(keys=keys, args=arguments)
            self._enqueued(recorded)
            return False
        keys += [in_progress_key_prefix + generation_id, retry_key_prefix + generation_id, abort_jobs_ss]
        arguments += [place.in_progress_ms, 1 if place.heeds_aborts else 0]
        # Its slots taken in the same trip, where the run would make a trip of its own for them.
        slots = None if recorded is None else place.slots_call(recorded)
        if slots is not None:
            keys += slots[0]
            arguments += slots[1]
        try:
            taken = await self._enqueue_and_take_script(keys=keys, args=arguments)
        except BaseException:
            # Not sent, or its answer lost: the job, if it was taken, runs when its mark expires
            # (the dispatcher meanwhile runs the generation on Plan B, and the job then ends).
            place.give_back()
            raise
        if not isinstance(taken, list):  # there already: a look finds it
            place.give_back()
            self._enqueued(recorded)
            return False
        if claimed is None and recorded is not None and self.enqueued_here is not None:
            self.enqueued_here.put(recorded)  # before its job starts, which takes it from there
        place.start(generation_id, taken[:4], claimed, None if slots is None else taken[4])
        return True

    def _enqueued(self, recorded: Generation | None) -> None:
        """A job enqueued for a look at the queue to take: its generation kept for the worker here,
        which is told to look."""
        if recorded is not None and self.enqueued_here is not None:
            self.enqueued_here.put(recorded)
        if self.on_enqueued is not None:
            self.on_enqueued()

    async def wake(self, *generation_ids: str) -> None:
        # arq keeps a deferred job in its queue, a sorted set scored by when it may run: moving the
        # score to now runs it at the next poll. XX: only a job still queued (never re-add one).
        if generation_ids:
            now = int(time.time() * 1000)
            scores: dict[str, float] = {generation_id: now for generation_id in generation_ids}
            await self.pool.zadd(self.pool.default_queue_name, scores, xx=True)

    async def wake_in_order(self, arrivals: Mapping[str, float]) -> None:
        """Run these deferred jobs now, ordered by `arrivals` (ms, in the past: due at once). LT: a job
        woken already keeps its earlier place, and a repeated wake never pushes one back."""
        if arrivals:
            await self.pool.zadd(self.pool.default_queue_name, dict(arrivals), xx=True, lt=True)

    async def stop(self, generation_id: str) -> None:
        if self.enqueued_here is not None:
            self.enqueued_here.take(generation_id)  # settled: its job must read it as it is now
        if await self.pool.exists(in_progress_key_prefix + generation_id):
            # Running: arq cancels it at its next look at the abort set (workers allow aborts).
            await self.pool.zadd(abort_jobs_ss, {generation_id: int(time.time() * 1000)})
        else:
            # Waiting for a deferred retry: run it now; it finds the generation final and ends,
            # giving back its concurrency slots.
            await self.wake(generation_id)

    async def depth(self) -> int:
        """Jobs in arq's queue (a sorted set of job ids), deferred ones included."""
        return int(await self.pool.zcard(self.pool.default_queue_name))

    async def in_flight(self) -> InFlight:
        """Plan A generations holding their slots (slots not yet expired), and those waiting in a line
        for one (a waiter stands in one line at a time), over every worker."""
        now_ms = int(time.time() * 1000)
        running = await self.pool.zcount(OVERALL_SLOT, now_ms, "+inf")
        lines = await self.pool.smembers(LINES)  # type: ignore[misc]
        waiting = 0
        if lines:
            async with self.pool.pipeline(transaction=False) as pipe:
                for line in lines:
                    pipe.zcard(line)
                waiting = sum(int(count) for count in await pipe.execute())
        return InFlight(running=int(running), waiting=waiting)

    async def ping(self) -> bool:
        try:
            return bool(await asyncio.wait_for(self.pool.ping(), timeout=self.timeout))
        except Exception:
            return False

    async def close(self) -> None:
        await self.pool.aclose()
