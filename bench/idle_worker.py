"""What an idle Plan A worker costs: its CPU and the commands it sends Redis while no job comes.

    uv run --locked python -m bench.idle_worker --redis-url redis://127.0.0.1:6379/12 --seconds 10

The product's worker (`jobs/runner.py`, `PromptWorker`, looking at the queue every `--poll-delay`
seconds, aborts allowed as the product allows them) runs with nothing to do, once as it is and once
with arq's own check for aborted jobs at every look, alternated `--rounds` times. Prints, for each,
the process's CPU (% of a core) and Redis's own count of commands processed per second (the server's
whole count: give it a Redis with nothing else talking to it).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from arq.connections import ArqRedis, RedisSettings, create_pool
from arq.worker import Worker, func

from jobs.queue import deserialize, serialize
from jobs.runner import PromptWorker


async def noop(ctx: dict[str, Any]) -> None:
    return None


async def commands_processed(pool: ArqRedis) -> int:
    return int((await pool.info("stats"))["total_commands_processed"])


async def idle(
    redis_url: str, seconds: float, poll_delay: float, arqs_own_check: bool
) -> tuple[float, float]:
    pool = await create_pool(
        RedisSettings.from_dsn(redis_url), job_serializer=serialize, job_deserializer=deserialize
    )
    worker = PromptWorker(
        functions=[func(noop, name="noop")],
        redis_pool=pool,
        handle_signals=False,
        poll_delay=poll_delay,
        allow_abort_jobs=True,
        job_serializer=serialize,
        job_deserializer=deserialize,
    )
    if arqs_own_check:
        worker._cancel_aborted_jobs = lambda: Worker._cancel_aborted_jobs(worker)  # type: ignore[method-assign]
    running = asyncio.create_task(worker.main())
    try:
        await asyncio.sleep(1.0)  # started, connections open
        cpu_before, commands_before = time.process_time(), await commands_processed(pool)
        await asyncio.sleep(seconds)
        cpu_after, commands_after = time.process_time(), await commands_processed(pool)
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        await pool.aclose()
    # The INFO that read the count is one of the commands counted.
    return 100 * (cpu_after - cpu_before) / seconds, (commands_after - commands_before - 1) / seconds


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/12")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--poll-delay", type=float, default=0.02, help="WORKER_POLL_DELAY's default")
    parser.add_argument("--rounds", type=int, default=2)
    arguments = parser.parse_args()
    for _ in range(arguments.rounds):
        for label, arqs_own_check in (("arq's own abort check", True), ("the product's worker", False)):
            cpu, commands = asyncio.run(
                idle(arguments.redis_url, arguments.seconds, arguments.poll_delay, arqs_own_check)
            )
            print(f"{label}: {cpu:.1f} % of a core, {commands:.0f} Redis commands/s", flush=True)


if __name__ == "__main__":
    main()
