"""Plan A's enqueue and a worker's take of a job, each one script in Redis instead of arq's WATCH,
checks and MULTI/EXEC (jobs/queue.py, jobs/runner.py), against real Redis: the same keys and values
as arq's own, a job never twice, and a job taken by one worker only."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from functools import partial
from types import SimpleNamespace
from typing import Any

import pytest
from arq.connections import ArqRedis, RedisSettings, create_pool
from arq.constants import (
    abort_jobs_ss,
    default_queue_name,
    in_progress_key_prefix,
    job_key_prefix,
    result_key_prefix,
    retry_key_prefix,
)
from arq.jobs import Job
from arq.utils import timestamp_ms
from arq.worker import Worker, func

from generation.limits import Limits
from generation.store import Generation, unattached
from jobs.limits import PREFIX, ConcurrencyLimiter
from jobs.queue import JOB_FUNCTION, ArqQueue, deserialize, serialize
from jobs.runner import (
    _FINISH,
    _FINISH_AND_RELEASE,
    _LIMITER,
    _TAKE,
    FULL_LOOK_EVERY,
    PromptWorker,
    _limiter,
    _release,
)
from settings import Settings
from tests.integration.redis_trips import count_round_trips

# arq's worker keeps a job's in-progress mark this long (ms): its job timeout plus 10 s.
JOB_TIMEOUT = 30


@pytest.fixture
async def pool(redis_url: str) -> AsyncIterator[ArqRedis]:
    arq_pool = await create_pool(
        RedisSettings.from_dsn(redis_url), job_serializer=serialize, job_deserializer=deserialize
    )
    yield arq_pool
    await arq_pool.aclose()


async def test_an_enqueue_writes_what_arqs_own_enqueue_writes(pool: ArqRedis) -> None:
    before = timestamp_ms()
    await ArqQueue(pool).enqueue("a" * 32)
    await pool.enqueue_job(JOB_FUNCTION, "b" * 32, _job_id="b" * 32)  # arq's own, for comparison

    ours, arqs = [
        await Job(job_id, pool, _deserializer=deserialize).info() for job_id in ("a" * 32, "b" * 32)
    ]
    assert ours is not None and arqs is not None
    # (msgpack gives the arguments back as a list, whoever enqueued them)
    assert (ours.function, list(ours.args), ours.kwargs, ours.job_try) == (JOB_FUNCTION, ["a" * 32], {}, None)
    assert (arqs.function, list(arqs.args), arqs.kwargs, arqs.job_try) == (JOB_FUNCTION, ["b" * 32], {}, None)
    queued = dict(await pool.zrange(default_queue_name, 0, -1, withscores=True))
    assert before <= queued[b"a" * 32] <= timestamp_ms()  # due now, scored in ms as arq scores
    ttl_ours, ttl_arqs = (
        await pool.pttl(job_key_prefix + "a" * 32),
        await pool.pttl(job_key_prefix + "b" * 32),
    )
    assert abs(ttl_ours - ttl_arqs) < 5_000 and ttl_ours > pool.expires_extra_ms - 5_000


async def test_a_job_still_there_or_with_its_result_is_not_enqueued_again(pool: ArqRedis) -> None:
    queue = ArqQueue(pool)
    await queue.enqueue("c" * 32)
    first = await pool.get(job_key_prefix + "c" * 32)
    await queue.enqueue("c" * 32)  # a retried submit: the job is still there
    assert await pool.zcard(default_queue_name) == 1
    assert await pool.get(job_key_prefix + "c" * 32) == first  # untouched

    # Finished: arq removed the job and kept its result; an enqueue now would run it twice.
    await pool.delete(job_key_prefix + "c" * 32)
    await pool.zrem(default_queue_name, "c" * 32)
    await pool.set(result_key_prefix + "c" * 32, b"done")
    await queue.enqueue("c" * 32)
    assert await pool.zcard(default_queue_name) == 0
    assert not await pool.exists(job_key_prefix + "c" * 32)


def prompt_worker(pool: ArqRedis, function: Any, name: str, **options: Any) -> PromptWorker:
    """A worker on `pool` for one job function, with the product's job (de)serializer."""
    return PromptWorker(
        functions=[func(function, name=name)],
        redis_pool=pool,
        job_timeout=JOB_TIMEOUT,
        handle_signals=False,
        job_serializer=serialize,
        job_deserializer=deserialize,
        **options,
    )


def worker_on(pool: ArqRedis, ran: list[str], max_jobs: int = 10) -> PromptWorker:
    async def remember(ctx: dict[str, Any], name: str) -> None:
        ran.append(name)

    return prompt_worker(pool, remember, "remember", max_jobs=max_jobs)


async def test_a_worker_takes_a_due_job_only_and_marks_it_in_progress(pool: ArqRedis) -> None:
    await pool.enqueue_job("remember", "due", _job_id="due")
    await pool.enqueue_job("remember", "later", _job_id="later", _defer_by=60)
    await pool.enqueue_job("remember", "elsewhere", _job_id="elsewhere")
    await pool.psetex(in_progress_key_prefix + "elsewhere", 60_000, b"1")  # another worker runs it
    ran: list[str] = []
    worker = worker_on(pool, ran)
    free = worker.sem._value

    await worker.start_jobs([b"due", b"later", b"elsewhere", b"gone"])  # "gone": no longer queued
    await asyncio.gather(*worker.tasks.values())

    assert ran == ["due"]
    assert set(worker.tasks) == {"due"}
    assert worker.job_counter == 0 and worker.sem._value == free  # every place given back
    assert not await pool.exists(in_progress_key_prefix + "later")
    assert await pool.pttl(in_progress_key_prefix + "elsewhere") > 50_000  # not the other's mark touched


async def test_a_look_takes_the_jobs_it_has_places_for_in_one_trip(
    pool: ArqRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    names = [f"look-{number}" for number in range(12)]
    for name in names:
        await pool.enqueue_job("remember", name, _job_id=name)
    ran: list[str] = []
    worker = worker_on(pool, ran, max_jobs=10)
    await pool.script_load(_TAKE)  # as Redis knows it after the first take (a restart forgets)
    trips = count_round_trips(pool, monkeypatch)
    await worker.start_jobs([name.encode() for name in names])
    assert trips[0] == 1  # ten taken in one trip (the jobs have not run yet)
    assert list(worker.tasks) == names[:10]  # in the queue's order; no place for the last two
    await asyncio.gather(*worker.tasks.values())
    assert sorted(ran) == sorted(names[:10])
    assert not await pool.exists(in_progress_key_prefix + names[10])  # left for a later look


async def test_a_taken_job_starts_without_a_trip_of_its_own_and_as_arq_reads_it(
    pool: ArqRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """arq's `run_job` reads the job first (its data, its try counted, its mark of abort taken off),
    a round trip of its own per job: the take reads it in its trip."""
    seen: list[tuple[str, int]] = []
    started = asyncio.Event()

    async def note(ctx: dict[str, Any], name: str) -> None:
        seen.append((name, ctx["job_try"]))
        started.set()

    await pool.enqueue_job("note", "first", _job_id="read")
    worker = prompt_worker(pool, note, "note", allow_abort_jobs=True)
    for script in (_TAKE, _FINISH):  # as Redis knows them after the first job (a restart forgets)
        await pool.script_load(script)
    trips = count_round_trips(pool, monkeypatch)
    await worker.start_jobs([b"read"])
    await asyncio.wait_for(started.wait(), 5)
    assert trips[0] == 1  # the take, and nothing more before the job's function ran
    assert seen == [("first", 1)]
    await asyncio.gather(*worker.tasks.values())
    assert trips[0] == 2  # its end
    result = await Job("read", pool, _deserializer=deserialize).result_info()
    assert result is not None and result.success and result.job_try == 1

    # Its second try counts as arq counts it, the retry key kept as long as arq keeps it.
    await pool.enqueue_job("note", "again", _job_id="again")
    await pool.set(retry_key_prefix + "again", 1)
    started.clear()
    await worker.start_jobs([b"again"])
    await asyncio.wait_for(started.wait(), 5)
    assert seen[-1] == ("again", 2)
    assert 88_000 < await pool.ttl(retry_key_prefix + "again") <= 88_400
    await asyncio.gather(*worker.tasks.values())


async def test_a_taken_job_asked_to_abort_or_gone_ends_as_arq_ends_it(pool: ArqRedis) -> None:
    ran: list[str] = []
    worker = worker_on(pool, ran)
    worker.allow_abort_jobs = True
    await pool.enqueue_job("remember", "aborted", _job_id="aborted")
    await pool.zadd(abort_jobs_ss, {"aborted": timestamp_ms()})  # asked to abort before it started
    await pool.enqueue_job("remember", "gone", _job_id="gone")
    await pool.delete(job_key_prefix + "gone")  # its data expired, its place in the queue still there

    await worker.start_jobs([b"aborted", b"gone"])
    await asyncio.gather(*worker.tasks.values())

    assert ran == []
    assert await pool.zscore(abort_jobs_ss, "aborted") is None
    for job_id in ("aborted", "gone"):
        result = await Job(job_id, pool, _deserializer=deserialize).result_info()
        assert result is not None and not result.success
        assert await pool.zscore(default_queue_name, job_id) is None  # not taken again
        assert not await pool.exists(in_progress_key_prefix + job_id)


async def test_a_look_takes_the_due_jobs_it_has_places_for_in_its_own_trip(
    pool: ArqRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: dict[str, asyncio.Event] = {}
    hold = asyncio.Event()

    async def wait(ctx: dict[str, Any], name: str) -> None:
        started[name].set()
        await hold.wait()

    worker = prompt_worker(pool, wait, "wait", max_jobs=3, allow_abort_jobs=True)
    await worker._poll_iteration()  # the first look also records the worker's health
    names = ["first", "second", "third", "no-place"]
    for number, name in enumerate(names):
        started[name] = asyncio.Event()
        await pool.enqueue_job("wait", name, _job_id=name)
        await pool.zadd(default_queue_name, {name: 1_000 + number})  # due, in this order
    await pool.enqueue_job("wait", "later", _job_id="later", _defer_by=60)
    await pool.enqueue_job("wait", "elsewhere", _job_id="elsewhere")
    await pool.psetex(in_progress_key_prefix + "elsewhere", 60_000, b"1")  # another worker runs it
    try:
        trips = count_round_trips(pool, monkeypatch)
        await worker._poll_iteration()
        await asyncio.wait_for(asyncio.gather(*(started[name].wait() for name in names[:3])), 5)
        assert trips[0] == 1  # read, taken and started: one trip, where arq makes two and one per job
        assert sorted(worker.job_tasks) == sorted(names[:3])  # no place for the fourth
        assert worker.job_counter == 3
        assert not await pool.exists(in_progress_key_prefix + "no-place")  # left for a later look
        assert not await pool.exists(in_progress_key_prefix + "later")

        hold.set()  # they end; the next look takes the one left
        await asyncio.wait_for(asyncio.gather(*worker.tasks.values()), 5)
        assert worker.job_counter == 0
        await worker._poll_iteration()
        await asyncio.wait_for(started["no-place"].wait(), 5)
        await asyncio.wait_for(worker.tasks["no-place"], 5)
        assert worker.job_counter == 0 and worker.sem._value == 4  # every place free again
        assert await pool.pttl(in_progress_key_prefix + "elsewhere") > 50_000  # never taken here
    finally:
        for task in worker.tasks.values():
            task.cancel()
        await asyncio.gather(*worker.tasks.values(), return_exceptions=True)


async def test_a_look_that_redis_does_not_answer_holds_no_place(
    pool: ArqRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    worker = worker_on(pool, [], max_jobs=5)
    await pool.enqueue_job("remember", "unseen", _job_id="unseen")
    free = worker.sem._value

    async def no_answer(*args: Any, **kwargs: Any) -> Any:
        raise ConnectionError("Redis went away")

    monkeypatch.setattr(pool.connection_pool, "get_connection", no_answer)
    with pytest.raises(ConnectionError):
        await worker._poll_iteration()
    assert worker.job_counter == 0 and worker.sem._value == free and not worker.tasks


async def test_the_mark_a_taken_job_gets_lasts_the_workers_in_progress_time(pool: ArqRedis) -> None:
    hold = asyncio.Event()

    async def wait(ctx: dict[str, Any]) -> None:
        await hold.wait()

    await pool.enqueue_job("wait", _job_id="held")
    worker = prompt_worker(pool, wait, "wait")
    await worker.start_jobs([b"held"])
    ttl = await pool.pttl(in_progress_key_prefix + "held")
    hold.set()
    await asyncio.gather(*worker.tasks.values())
    assert (JOB_TIMEOUT + 10) * 1000 - 5_000 < ttl <= (JOB_TIMEOUT + 10) * 1000


@pytest.mark.parametrize("taking", ["their takes", "their looks"])
async def test_two_workers_taking_the_same_jobs_at_once_run_each_once(pool: ArqRedis, taking: str) -> None:
    names = [f"job-{number}" for number in range(40)]
    for name in names:
        await pool.enqueue_job("remember", name, _job_id=name)
    ran: list[str] = []
    # Each has a place for every job: both try to take all of them, in one trip each.
    first, second = worker_on(pool, ran, len(names)), worker_on(pool, ran, len(names))
    ids = [name.encode() for name in names]

    if taking == "their takes":
        await asyncio.gather(first.start_jobs(ids), second.start_jobs(list(reversed(ids))))
    else:  # each reads the queue and takes what it finds, in one script
        await asyncio.gather(first._poll_iteration(), second._poll_iteration())
    await asyncio.gather(*first.tasks.values(), *second.tasks.values())

    assert sorted(ran) == sorted(names)
    assert not set(first.tasks) & set(second.tasks)


async def test_an_idle_worker_does_not_ask_for_aborted_jobs_and_a_running_one_is_still_aborted(
    pool: ArqRedis,
) -> None:
    started = asyncio.Event()

    async def wait(ctx: dict[str, Any]) -> None:
        started.set()
        await asyncio.Event().wait()  # until aborted

    worker = prompt_worker(pool, wait, "wait", allow_abort_jobs=True)
    asked: list[str] = []
    real_pipeline = pool.pipeline

    def pipeline(*args: Any, **kwargs: Any) -> Any:
        asked.append("pipeline")
        return real_pipeline(*args, **kwargs)

    pool.pipeline = pipeline  # type: ignore[method-assign]
    try:
        await worker._cancel_aborted_jobs()
        assert asked == []  # nothing runs here: Redis is not asked

        job = await pool.enqueue_job("wait", _job_id="to-abort")
        assert job is not None
        await worker.start_jobs([b"to-abort"])
        await asyncio.wait_for(started.wait(), 5)
        asked.clear()
        aborting = asyncio.create_task(job.abort(timeout=5, poll_delay=0.05))
        for _ in range(100):  # the worker's looks at the queue
            await worker._cancel_aborted_jobs()
            if aborting.done() or not worker.job_tasks:
                break
            await asyncio.sleep(0.05)
        assert asked  # with a job running, it asked
        await asyncio.wait_for(worker.tasks["to-abort"], 10)
        assert not worker.job_tasks  # the job's function was cancelled
        result = await job.result_info()
        assert result is not None and not result.success
        aborting.cancel()
    finally:
        pool.pipeline = real_pipeline  # type: ignore[method-assign]
        for task in worker.tasks.values():
            task.cancel()


async def test_a_full_worker_looks_every_full_look_every_and_still_aborts(
    pool: ArqRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker with room looks at every poll; a full one only every FULL_LOOK_EVERY (its look takes no
    job: it notes the worker present and reads the jobs asked to abort), and its jobs still abort."""
    started = {name: asyncio.Event() for name in ("running", "to-abort")}

    async def wait(ctx: dict[str, Any], name: str) -> None:
        started[name].set()
        await asyncio.Event().wait()  # until aborted

    worker = prompt_worker(pool, wait, "wait", max_jobs=2, allow_abort_jobs=True)
    try:
        for name in ("running", "to-abort"):
            await pool.enqueue_job("wait", name, _job_id=name)
        await worker.start_jobs([b"running", b"to-abort"])
        await asyncio.wait_for(asyncio.gather(*(event.wait() for event in started.values())), 5)
        assert worker.job_counter == worker.max_jobs  # full
        await worker._poll_iteration()  # the first look also records the worker's health

        await asyncio.sleep(FULL_LOOK_EVERY)
        trips = count_round_trips(pool, monkeypatch)
        await worker._poll_iteration()
        assert trips[0] == 1  # its look
        await worker._poll_iteration()
        await worker._poll_iteration()
        assert trips[0] == 1  # a moment later: no look

        await pool.zadd(abort_jobs_ss, {"to-abort": timestamp_ms()})  # what arq's `Job.abort` writes
        await asyncio.sleep(FULL_LOOK_EVERY)
        await worker._poll_iteration()  # its next look reads the job asked to abort
        await asyncio.wait_for(asyncio.wait([worker.tasks["to-abort"]]), 10)
        assert sorted(worker.job_tasks) == ["running"]
        assert await pool.zscore(abort_jobs_ss, "to-abort") is None
    finally:
        for task in worker.tasks.values():
            task.cancel()
        await asyncio.gather(*worker.tasks.values(), return_exceptions=True)


FINISHES = {
    "done, its result kept an hour": (True, b"result", 3600.0, False, None, None),
    "done, its result kept for ever": (True, b"result", 3600.0, True, None, None),
    "done, no result to keep": (True, None, 3600.0, False, None, None),
    "deferred, its score moved on": (False, None, None, False, 5_000, None),
    "not finished, nothing moved": (False, None, None, False, None, None),
    "a cron job, its mark kept a while": (True, b"result", 3600.0, False, None, 60.0),
}


@pytest.mark.parametrize("case", list(FINISHES))
async def test_a_job_ends_with_the_writes_of_arqs_own_finish(pool: ArqRedis, case: str) -> None:
    finish, result_data, result_timeout_s, forever, incr_score, keep_in_progress = FINISHES[case]
    worker = worker_on(pool, [])

    async def state_of(job_id: str) -> dict[str, Any]:
        async def ttl(key: str) -> str:
            left = await pool.pttl(key)  # -2: no key, -1: no expiry; else rounded to the minute
            return str(left) if left < 0 else f"~{round(left / 60_000)} min"

        return {
            "in progress": await ttl(in_progress_key_prefix + job_id),
            "job": await ttl(job_key_prefix + job_id),
            "retry": await ttl(retry_key_prefix + job_id),
            "result": (await pool.get(result_key_prefix + job_id), await ttl(result_key_prefix + job_id)),
            "queued": await pool.zscore(default_queue_name, job_id),
            "asked to abort": await pool.zscore(abort_jobs_ss, job_id) is not None,
        }

    states = []
    for job_id, finish_job in (("ours", worker.finish_job), ("arqs", partial(Worker.finish_job, worker))):
        await pool.enqueue_job("remember", job_id, _job_id=job_id, _defer_until=None)
        await pool.zadd(default_queue_name, {job_id: 1_000})
        await pool.psetex(in_progress_key_prefix + job_id, 30_000, b"1")
        await pool.incr(retry_key_prefix + job_id)
        await pool.expire(retry_key_prefix + job_id, 88_400)
        await pool.zadd(abort_jobs_ss, {job_id: 1})
        await finish_job(job_id, finish, result_data, result_timeout_s, forever, incr_score, keep_in_progress)
        states.append(await state_of(job_id))
    assert states[0] == states[1]


async def test_a_busy_worker_reads_the_due_and_the_aborted_jobs_in_one_trip(
    pool: ArqRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    started = {name: asyncio.Event() for name in ("running", "to-abort", "due")}

    async def wait(ctx: dict[str, Any], name: str) -> None:
        started[name].set()
        await asyncio.Event().wait()  # until aborted

    worker = prompt_worker(pool, wait, "wait", allow_abort_jobs=True)
    try:
        for name in ("running", "to-abort"):
            await pool.enqueue_job("wait", name, _job_id=name)
        await worker.start_jobs([b"running", b"to-abort"])
        await asyncio.wait_for(asyncio.gather(started["running"].wait(), started["to-abort"].wait()), 5)
        await worker._poll_iteration()  # the first look also records the worker's health

        trips = count_round_trips(pool, monkeypatch)
        await worker._poll_iteration()
        assert trips[0] == 1  # nothing due, nothing to abort: one trip, where arq's look makes two

        await pool.enqueue_job("wait", "due", _job_id="due")
        await pool.zadd(abort_jobs_ss, {"to-abort": timestamp_ms()})  # what arq's `Job.abort` writes
        await worker._poll_iteration()
        await asyncio.wait_for(started["due"].wait(), 5)
        await asyncio.wait_for(asyncio.wait([worker.tasks["to-abort"]]), 10)
        assert sorted(worker.job_tasks) == ["due", "running"]  # the one asked to abort was cancelled
        assert await pool.zscore(abort_jobs_ss, "to-abort") is None  # and is no longer asked
        assert (await worker.tasks["to-abort"]) is None
        result = await Job("to-abort", pool, _deserializer=deserialize).result_info()
        assert result is not None and not result.success
    finally:
        for task in worker.tasks.values():
            task.cancel()
        await asyncio.gather(*worker.tasks.values(), return_exceptions=True)


async def test_the_jobs_of_a_worker_share_its_limiter(pool: ArqRedis) -> None:
    """arq gives each job a copy of the worker's ctx: a limiter a job made for itself would be made anew
    by every job (its scripts registered again each time)."""
    seen: list[ConcurrencyLimiter] = []

    async def look(ctx: dict[str, Any], name: str) -> None:
        seen.append(_limiter(ctx, ctx["services"].settings))

    worker = prompt_worker(
        pool, look, "look", poll_delay=0.01, ctx={"services": SimpleNamespace(settings=Settings())}
    )
    for name in ("one", "two", "three"):
        await pool.enqueue_job("look", name, _job_id=name)
    running = asyncio.create_task(worker.main())
    try:
        for _ in range(500):
            if len(seen) == 3:
                break
            await asyncio.sleep(0.01)
    finally:
        running.cancel()
        await asyncio.gather(running, *worker.tasks.values(), return_exceptions=True)
    assert len(seen) == 3 and seen[0] is seen[1] is seen[2]


async def test_a_settled_generations_slots_go_back_in_its_jobs_last_trip(
    pool: ArqRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job whose generation settled frees its slots in the script that ends the job (one trip where
    the release was a trip of its own), and the first in line for them is woken, as a release does."""
    limiter = ConcurrencyLimiter(
        pool, Limits(per_user=1, per_provider={}, overall=100, creates_per_minute={}), slot_ttl=60
    )
    settled = unattached(Generation, {"id": "s" * 32, "user_id": 5})
    assert await limiter.acquire(settled.id, settled.user_id, "replicate") is None
    waiter = await limiter.acquire("w" * 32, settled.user_id, "replicate", arrival=1.0)
    assert waiter is not None and waiter.limit == "user:5"
    await pool.enqueue_job("wait", "w" * 32, _job_id="w" * 32, _defer_by=300)  # deferred, as a waiter is
    await pool.script_load(_FINISH_AND_RELEASE)  # as after a first job: loaded
    ended = asyncio.Event()
    trips_before_the_end: list[int] = []

    async def settle(ctx: dict[str, Any], generation_id: str) -> None:
        await _release(ctx, ctx[_LIMITER], settled, "replicate")
        assert await pool.zscore(PREFIX + "user:5", settled.id) is not None  # not yet: with the end
        trips_before_the_end.append(trips[0])
        ended.set()

    worker = prompt_worker(pool, settle, "settle", ctx={_LIMITER: limiter})
    worker.ctx["redis"] = pool
    await pool.enqueue_job("settle", settled.id, _job_id=settled.id)
    trips = count_round_trips(pool, monkeypatch)
    await worker.start_jobs([settled.id.encode()])
    await asyncio.wait_for(ended.wait(), 5)
    await asyncio.wait_for(asyncio.gather(*worker.tasks.values()), 5)
    # Once the job's function returned: its end with the release in one trip, then the waiter's wake.
    assert trips[0] - trips_before_the_end[0] == 2

    assert await pool.zscore(PREFIX + "user:5", settled.id) is None  # its slot is free
    assert await pool.zscore(default_queue_name, "w" * 32) == 1_000  # the waiter runs now, in its place
    assert await pool.get(result_key_prefix + settled.id) is not None  # the job ended as arq ends it
