"""A Plan A job enqueued by a process whose embedded worker has a place free is taken for that worker
in the enqueue's own trip (jobs/queue.py `ArqQueue.worker_here`, jobs/runner.py `hold_place`), against
real Redis: it starts at once, with no look at the queue and no trip of its own; otherwise it is
enqueued for a look to take, as before, and every place is accounted for."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import pytest
from arq.connections import ArqRedis, RedisSettings, create_pool
from arq.constants import default_queue_name, in_progress_key_prefix, retry_key_prefix
from arq.jobs import Job
from arq.worker import func

from generation.store import Generation, unattached
from jobs.batched_scripts import BatchedScript
from jobs.queue import _ENQUEUE_AND_TAKE, JOB_FUNCTION, ArqQueue, EnqueuedHere, deserialize, serialize
from jobs.runner import _LIMITER, _LOOK, FULL_LOOK_EVERY, LINES_FORM_WITHIN, LOOKING_PREFIX, PromptWorker
from tests.integration.redis_trips import count_round_trips


async def _pool(redis_url: str) -> ArqRedis:
    return await create_pool(
        RedisSettings.from_dsn(redis_url), job_serializer=serialize, job_deserializer=deserialize
    )


@pytest.fixture
async def pools(redis_url: str) -> AsyncIterator[tuple[ArqRedis, ArqRedis]]:
    """The front's pool and the worker's, as a process has them."""
    front, worker = await _pool(redis_url), await _pool(redis_url)
    yield front, worker
    await front.aclose()
    await worker.aclose()


class Runs:
    """The job function: each run's generation id and try, and a gate the runs wait at."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, int]] = []
        self.started = asyncio.Event()
        self.gate = asyncio.Event()
        self.gate.set()

    async def run(self, ctx: dict[str, Any], generation_id: str) -> str:
        self.seen.append((generation_id, ctx["job_try"]))
        self.started.set()
        await self.gate.wait()
        return "done"


@contextlib.asynccontextmanager
async def running_worker(
    pool: ArqRedis, runs: Runs, max_jobs: int = 5, places_alone: int = 0
) -> AsyncIterator[PromptWorker]:
    """A worker looping as `aibot run`'s does, but looking at the queue only every 30 s: a job it
    runs within a test was taken for it by the enqueue."""
    worker = PromptWorker(
        functions=[func(runs.run, name=JOB_FUNCTION)],
        redis_pool=pool,
        handle_signals=False,
        job_serializer=serialize,
        job_deserializer=deserialize,
        max_jobs=max_jobs,
        places_alone=places_alone,
        poll_delay=30,
        allow_abort_jobs=True,
    )
    main = asyncio.create_task(worker.main())
    for _ in range(500):  # its first look made, health recorded last, it waits for the next
        if worker._last_health_check_log is not None:
            break
        await asyncio.sleep(0.01)
    try:
        yield worker
    finally:
        main.cancel()
        runs.gate.set()
        await asyncio.gather(main, *worker.tasks.values(), return_exceptions=True)


def queue_with(pool: ArqRedis, worker: PromptWorker) -> tuple[ArqQueue, list[str]]:
    queue = ArqQueue(pool)
    queue.worker_here = worker
    queue.enqueued_here = EnqueuedHere()
    nudges: list[str] = []
    queue.on_enqueued = lambda: nudges.append("nudged")
    return queue, nudges


def recorded(generation_id: str) -> Generation:
    return unattached(Generation, {"id": generation_id, "user_id": 1, "kind": "image", "plan": "A"})


async def test_a_job_enqueued_while_the_worker_here_has_a_place_starts_there_in_the_enqueues_trip(
    pools: tuple[ArqRedis, ArqRedis], monkeypatch: pytest.MonkeyPatch
) -> None:
    front, back = pools
    runs = Runs()
    runs.gate.clear()
    async with running_worker(back, runs) as worker:
        queue, nudges = queue_with(front, worker)
        await front.script_load(_ENQUEUE_AND_TAKE)  # as Redis knows it after the first (a restart forgets)
        front_trips, worker_trips = (
            count_round_trips(front, monkeypatch),
            count_round_trips(back, monkeypatch),
        )
        generation_id = "a" * 32

        await queue.enqueue(generation_id, recorded(generation_id))
        await asyncio.wait_for(runs.started.wait(), 5)

        assert (front_trips[0], worker_trips[0]) == (1, 0)  # enqueued and taken in one; no look
        assert runs.seen == [(generation_id, 1)]
        assert nudges == []  # the worker was not asked to look
        assert worker.job_counter == 1 and list(worker.job_tasks) == [generation_id]
        assert await front.exists(in_progress_key_prefix + generation_id)
        assert len(queue.enqueued_here or []) == 1  # the generation as recorded, for its job to take

        runs.gate.set()
        await asyncio.wait_for(worker.tasks[generation_id], 5)
        result = await Job(generation_id, front, _deserializer=deserialize).result_info()
        assert result is not None and result.success and result.result == "done" and result.job_try == 1
        assert await front.zscore(default_queue_name, generation_id) is None  # ended, as arq ends it
        assert not await front.exists(retry_key_prefix + generation_id)
        assert worker.job_counter == 0


async def test_a_job_enqueued_while_the_worker_here_is_full_or_stopping_waits_for_a_look(
    pools: tuple[ArqRedis, ArqRedis],
) -> None:
    front, back = pools
    runs = Runs()
    runs.gate.clear()
    async with running_worker(back, runs, max_jobs=1) as worker:
        queue, nudges = queue_with(front, worker)
        await queue.enqueue("b" * 32, recorded("b" * 32))  # takes the only place
        await asyncio.wait_for(runs.started.wait(), 5)

        await queue.enqueue("c" * 32, recorded("c" * 32))
        worker.allow_pick_jobs = False  # draining: takes nothing more
        await queue.enqueue("d" * 32, recorded("d" * 32))

        assert runs.seen == [("b" * 32, 1)]
        assert nudges == ["nudged", "nudged"]  # told to look, as before
        for waiting in ("c" * 32, "d" * 32):
            assert await front.zscore(default_queue_name, waiting) is not None
            assert not await front.exists(in_progress_key_prefix + waiting)  # for any worker to take
        assert worker.job_counter == 1 and worker.sem._value == 1  # no place held for them
        assert len(queue.enqueued_here or []) == 3  # each kept for its job, whenever taken here


async def test_a_job_there_already_is_not_taken_again_and_its_place_goes_back(
    pools: tuple[ArqRedis, ArqRedis],
) -> None:
    front, back = pools
    runs = Runs()
    generation_id = "e" * 32
    await ArqQueue(front).enqueue(generation_id)  # enqueued before (a retried submit)
    await front.psetex(in_progress_key_prefix + generation_id, 60_000, b"1")  # another worker runs it
    async with running_worker(back, runs) as worker:
        queue, nudges = queue_with(front, worker)
        free = worker.sem._value

        await queue.enqueue(generation_id, recorded(generation_id))

        assert runs.seen == [] and not worker.tasks
        assert worker.job_counter == 0 and worker.sem._value == free
        assert nudges == ["nudged"]
        assert await front.pttl(in_progress_key_prefix + generation_id) > 50_000  # the other's, untouched


async def test_an_enqueue_that_fails_holds_no_place(
    pools: tuple[ArqRedis, ArqRedis], monkeypatch: pytest.MonkeyPatch
) -> None:
    front, back = pools
    runs = Runs()
    async with running_worker(back, runs) as worker:
        queue, _ = queue_with(front, worker)
        free = worker.sem._value

        async def no_answer(*args: Any, **kwargs: Any) -> Any:
            raise ConnectionError("Redis went away")

        monkeypatch.setattr(front.connection_pool, "get_connection", no_answer)
        with pytest.raises(ConnectionError):
            await queue.enqueue("f" * 32, recorded("f" * 32))
        assert worker.job_counter == 0 and worker.sem._value == free and not worker.tasks


async def test_a_worker_that_stopped_takes_nothing(pools: tuple[ArqRedis, ArqRedis]) -> None:
    front, back = pools
    runs = Runs()
    async with running_worker(back, runs) as worker:
        pass  # its loop ended
    assert not worker._running
    assert await worker.hold_place() is None
    queue, nudges = queue_with(front, worker)
    await queue.enqueue("9" * 32)
    assert nudges == ["nudged"] and runs.seen == []
    assert not await front.exists(in_progress_key_prefix + "9" * 32)


class HeldBack:
    """A worker's look script held back until `gate` opens, as a look still on its way to Redis."""

    def __init__(self, script: BatchedScript) -> None:
        self.script = script
        self.gate = asyncio.Event()

    async def __call__(self, **call: Any) -> Any:
        await self.gate.wait()
        return await self.script(**call)


async def test_an_enqueue_leaves_the_places_a_look_on_its_way_may_fill(
    pools: tuple[ArqRedis, ArqRedis],
) -> None:
    front, back = pools
    runs = Runs()
    runs.gate.clear()
    async with running_worker(back, runs, max_jobs=2) as worker:
        queue, nudges = queue_with(front, worker)
        for generation_id in ("1" * 32, "2" * 32):  # due, for a look to take
            await front.enqueue_job(JOB_FUNCTION, generation_id, _job_id=generation_id)
        held = HeldBack(BatchedScript(back, _LOOK))
        worker._look_script = held  # type: ignore[assignment]
        look = asyncio.create_task(worker._look(reads_aborts=False))
        await asyncio.sleep(0.05)  # the look counted its two places and is on its way

        await queue.enqueue("3" * 32, recorded("3" * 32))  # meanwhile: both places are the look's
        held.gate.set()
        await asyncio.wait_for(look, 5)

        assert sorted(worker.tasks) == ["1" * 32, "2" * 32]  # the look took both, the enqueue none
        assert worker.job_counter == 2 and worker.sem._value == 1  # never more than its places
        assert nudges == ["nudged"]
        assert not await front.exists(in_progress_key_prefix + "3" * 32)  # left for a later look


async def test_a_worker_whose_jobs_wait_for_slots_has_its_places_taken_but_no_claims_recorded(
    pools: tuple[ArqRedis, ArqRedis],
) -> None:
    """Its place still takes the job in the enqueue's trip; but while jobs here wait in lines, a
    claim recorded for the job would only be undone when it waits too."""
    _, back = pools
    async with running_worker(back, Runs()) as worker:
        limiter = SimpleNamespace(last_refusal=float("-inf"))
        worker.ctx[_LIMITER] = limiter
        place = await worker.hold_place()
        assert place is not None and place.owner == f"{worker.ctx['worker_id']}:1"
        place.give_back()

        limiter.last_refusal = time.monotonic()  # a job here just had to wait for a slot
        place = await worker.hold_place()
        assert place is not None and place.owner is None
        place.give_back()

        limiter.last_refusal = time.monotonic() - LINES_FORM_WITHIN - 1
        place = await worker.hold_place()
        assert place is not None and place.owner is not None
        place.give_back()
        assert worker.job_counter == 0


def _ids(first: int, count: int) -> list[str]:
    return [f"{index:032x}" for index in range(first, first + count)]


async def test_a_worker_no_other_looks_beside_takes_jobs_past_max_jobs(
    pools: tuple[ArqRedis, ArqRedis],
) -> None:
    """Alone at the queue, the worker here takes every job its front enqueues, up to `places_alone`:
    nobody else would take them sooner, and each one left for a look would cost a trip and a claim."""
    front, back = pools
    runs = Runs()
    runs.gate.clear()
    async with running_worker(back, runs, max_jobs=2, places_alone=4) as worker:
        queue, nudges = queue_with(front, worker)
        assert worker.places() == 4  # its first look found no other worker
        looking = await front.zrange(LOOKING_PREFIX + default_queue_name, 0, -1, withscores=True)
        assert [name.decode() for name, _ in looking] == [worker.ctx["worker_id"]]
        assert looking[0][1] > time.time() * 1000  # told until a while from now

        for generation_id in _ids(1, 5):
            await queue.enqueue(generation_id, recorded(generation_id))

        assert sorted(worker.tasks) == _ids(1, 4) and worker.job_counter == 4
        assert nudges == ["nudged"]  # the fifth waits in the queue
        assert not await front.exists(in_progress_key_prefix + _ids(5, 1)[0])


async def test_a_worker_takes_max_jobs_while_another_takes_jobs_and_its_fronts_past_it_alone(
    pools: tuple[ArqRedis, ArqRedis],
) -> None:
    """While another worker takes jobs from the queue, the worker here keeps to `max_jobs`: the rest of
    a burst goes to whichever has room first. Once the other is gone (it stopped, or it drains), the
    jobs its front enqueues are taken past `max_jobs`; its looks still keep to it."""
    front, back = pools
    runs = Runs()
    runs.gate.clear()
    looking = LOOKING_PREFIX + default_queue_name
    await front.zadd(looking, {"another-worker": time.time() * 1000 + 60_000})
    async with running_worker(back, runs, max_jobs=2, places_alone=4) as worker:
        queue, nudges = queue_with(front, worker)
        assert worker.places() == 2

        for generation_id in _ids(11, 4):
            await queue.enqueue(generation_id, recorded(generation_id))

        assert sorted(worker.tasks) == _ids(11, 2) and worker.job_counter == 2
        assert nudges == ["nudged", "nudged"]
        for waiting in _ids(13, 2):  # for any worker's look
            assert not await front.exists(in_progress_key_prefix + waiting)

        await asyncio.sleep(FULL_LOOK_EVERY)  # how often a full worker looks
        await worker._poll_iteration()  # full: it takes nothing, but tells the others it is there
        assert sorted(worker.tasks) == _ids(11, 2)
        noted = {name.decode() for name in await front.zrange(looking, 0, -1)}
        assert noted == {"another-worker", worker.ctx["worker_id"]}

        await front.zrem(looking, "another-worker")
        await asyncio.sleep(FULL_LOOK_EVERY)
        await worker._poll_iteration()  # hears that nobody else takes jobs
        assert worker.places() == 4
        for generation_id in _ids(15, 2):
            await queue.enqueue(generation_id, recorded(generation_id))

        # Its front's jobs are taken past max_jobs; its looks keep to max_jobs (the queued two wait).
        assert sorted(worker.tasks) == [*_ids(11, 2), *_ids(15, 2)] and worker.job_counter == 4
        await worker._poll_iteration()
        assert sorted(worker.tasks) == [*_ids(11, 2), *_ids(15, 2)]
        for waiting in _ids(13, 2):
            assert not await front.exists(in_progress_key_prefix + waiting)
