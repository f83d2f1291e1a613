"""Plan A's two Redis steps per job, arq's way against ours, in one process on the same Redis.

* enqueue: arq's `enqueue_job` (WATCH, EXISTS, MULTI/EXEC: three round trips) against `ArqQueue.
  enqueue` (one script, jobs/queue.py);
* take and run: arq's `Worker.start_jobs` (WATCH, EXISTS, ZSCORE, MULTI/EXEC: four) against
  `PromptWorker.start_jobs` (one script, jobs/runner.py), each taking due jobs, then arq running them
  (a function that does nothing; its two round trips, the same either way, are counted in both).

The two ways alternate in rounds of `--batch` jobs, so that the machine's swings fall on both alike;
the figures are the medians over the rounds of this process's CPU time and the wall time per job.

    uv run --locked python -m bench.arq_trips [--rounds 20] [--batch 200] [--redis-url URL]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from arq.connections import ArqRedis, RedisSettings, create_pool
from arq.worker import Worker, func

from jobs.queue import JOB_FUNCTION, ArqQueue, deserialize, serialize
from jobs.runner import PromptWorker


async def nothing(ctx: dict[str, Any], generation_id: str) -> None:
    return None


def worker_on(pool: ArqRedis) -> PromptWorker:
    return PromptWorker(
        functions=[func(nothing, name=JOB_FUNCTION)],
        redis_pool=pool,
        handle_signals=False,
        max_jobs=100_000,
        keep_result=0,
        job_serializer=serialize,
        job_deserializer=deserialize,
    )


async def timed(step: Callable[[], Awaitable[None]], jobs: int) -> tuple[float, float]:
    """CPU and wall ms per job of one round."""
    cpu, wall = time.process_time(), time.perf_counter()
    await step()
    return (time.process_time() - cpu) * 1000 / jobs, (time.perf_counter() - wall) * 1000 / jobs


async def measure(pool: ArqRedis, rounds: int, batch: int) -> dict[str, Any]:
    queue = ArqQueue(pool)
    worker = worker_on(pool)
    figures: dict[str, list[tuple[float, float]]] = {
        "enqueue arq": [],
        "enqueue script": [],
        "take and run arq": [],
        "take and run script": [],
    }
    for _ in range(rounds):
        for way in ("arq", "script"):
            ids = [uuid.uuid4().hex for _ in range(batch)]

            async def enqueue(ids: list[str] = ids, way: str = way) -> None:
                for job_id in ids:
                    if way == "arq":
                        await pool.enqueue_job(JOB_FUNCTION, job_id, _job_id=job_id)
                    else:
                        await queue.enqueue(job_id)

            figures[f"enqueue {way}"].append(await timed(enqueue, batch))
            due = [job_id.encode() for job_id in ids]

            async def take(due: list[bytes] = due, way: str = way) -> None:
                if way == "arq":
                    await Worker.start_jobs(worker, due)
                else:
                    await worker.start_jobs(due)
                # The jobs start as the taking awaits Redis: they are counted, to the end, either way.
                await asyncio.gather(*worker.tasks.values())
                worker.tasks.clear()

            figures[f"take and run {way}"].append(await timed(take, batch))
            await pool.flushdb()
    return {
        name: {
            "cpu_ms_per_job": round(statistics.median(cpu for cpu, _ in values), 4),
            "wall_ms_per_job": round(statistics.median(wall for _, wall in values), 4),
        }
        for name, values in figures.items()
    }


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/13")
    options = parser.parse_args()
    pool = await create_pool(
        RedisSettings.from_dsn(options.redis_url), job_serializer=serialize, job_deserializer=deserialize
    )
    await pool.flushdb()
    try:
        print(json.dumps(await measure(pool, options.rounds, options.batch), indent=2))
    finally:
        await pool.flushdb()
        await pool.aclose()


if __name__ == "__main__":
    asyncio.run(main())
