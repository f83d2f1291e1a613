"""Bare arq: how many no-op jobs per second a plain arq worker runs on a given Redis.

    python -m bench.bare_arq --redis-url redis://127.0.0.1:6379/13 --jobs 3000

One process, like `aibot run` with its embedded worker: a plain arq Worker (a no-op job function,
the product's worker knobs: max_jobs, poll_delay, msgpack payloads, results kept, aborts allowed)
runs while an enqueue loop adds `--jobs` jobs one after another, each with its own job id. Prints one
JSON line: jobs/s from the first enqueue to the last job completed, and the enqueue rate alone.
Flushes the Redis database before and after: give it one of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

import msgpack
from arq.connections import ArqRedis, RedisSettings, create_pool
from arq.worker import Worker, func

QUEUE = "bench:bare-arq"


async def noop(ctx: dict[str, Any], number: int) -> None:
    return None


def serialize(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True, default=repr)


def deserialize(raw: bytes) -> Any:
    return msgpack.unpackb(raw, raw=False)


async def measure(
    redis_url: str, jobs: int, max_jobs: int, poll_delay: float, timeout: float
) -> dict[str, float]:
    settings = RedisSettings.from_dsn(redis_url)
    pool: ArqRedis = await create_pool(
        settings, job_serializer=serialize, job_deserializer=deserialize, default_queue_name=QUEUE
    )
    await pool.flushdb()
    worker = Worker(
        functions=[func(noop, name="noop")],
        redis_pool=pool,
        queue_name=QUEUE,
        max_jobs=max_jobs,
        poll_delay=poll_delay,
        handle_signals=False,
        job_serializer=serialize,
        job_deserializer=deserialize,
        keep_result=3600,
        allow_abort_jobs=True,
    )
    running = asyncio.create_task(worker.async_run())
    try:
        await asyncio.sleep(0.2)  # the worker's first poll: it waits for jobs, as a product's does
        started = time.monotonic()
        for number in range(jobs):
            await pool.enqueue_job("noop", number, _job_id=f"bare-{number}")
        enqueued = time.monotonic()
        async with asyncio.timeout(timeout):
            # arq's Worker only counts its jobs: there is no event to await.
            while worker.jobs_complete + worker.jobs_failed < jobs:  # noqa: ASYNC110
                await asyncio.sleep(0.002)
        finished = time.monotonic()
        if worker.jobs_failed:
            raise RuntimeError(f"{worker.jobs_failed} no-op job(s) failed")
        # A job counts as complete a moment before its task ends: let them end before stopping.
        pending = [task for task in worker.tasks.values() if not task.done()]
        if pending:
            await asyncio.wait(pending, timeout=10)
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        await worker.close()
        await pool.flushdb()
        await pool.aclose()
    return {
        "jobs": jobs,
        "jobs_per_s": jobs / (finished - started),
        "enqueues_per_s": jobs / (enqueued - started),
        "seconds": finished - started,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/13")
    parser.add_argument("--jobs", type=int, default=3000)
    parser.add_argument("--max-jobs", type=int, default=50, help="as WORKER_MAX_JOBS")
    parser.add_argument("--poll-delay", type=float, default=0.05, help="as WORKER_POLL_DELAY")
    parser.add_argument("--timeout", type=float, default=120.0)
    arguments = parser.parse_args()
    result = asyncio.run(
        measure(
            arguments.redis_url, arguments.jobs, arguments.max_jobs, arguments.poll_delay, arguments.timeout
        )
    )
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
