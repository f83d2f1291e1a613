"""Throughput, request latency and memory of the whole app, on Plan A and on Plan B.

Starts the fake Telegram and Replicate servers and the app in this process (SQLite by default, or
--database-url for PostgreSQL), submits N text-to-image generations through the HTTP API at once,
and waits until all are delivered. Prints the accept latency (p50/p95/max), the time until the last
generation settled, generations per second, and the peak resident memory.

    uv run python bench/throughput.py --n 200
    uv run python bench/throughput.py --n 200 --database-url postgresql+asyncpg://postgres@127.0.0.1/bench

Needs Redis on 127.0.0.1:6379 for Plan A (database 9, flushed). Traffic stays on loopback.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import redis.asyncio as aioredis
from loguru import logger

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from server import App
from settings import load_settings
from tests.constants import API_TOKEN, BOT_TOKEN
from tests.fakes.replicate import FakeReplicate, Outcome
from tests.fakes.telegram import FakeTelegram

REDIS_URL = "redis://127.0.0.1:6379/9"


async def run(plan: str, count: int, database_url: str | None, polls: int) -> dict[str, float]:
    telegram, replicate = FakeTelegram(), FakeReplicate()
    await telegram.start()
    await replicate.start()
    telegram.add_bot(BOT_TOKEN, "bench_bot")
    replicate.default_outcome = Outcome(polls=polls)
    if plan == "A":
        client = aioredis.from_url(REDIS_URL)
        await client.flushdb()
        await client.aclose()
    with tempfile.TemporaryDirectory() as folder:
        settings = load_settings(
            _env_file=None,
            bot_tokens={"bench_bot": BOT_TOKEN},
            telegram_api_url=telegram.url,
            database_url=database_url or f"sqlite+aiosqlite:///{folder}/bench.db",
            redis_url=REDIS_URL,
            use_queue=plan == "A",
            replicate_api_token=replicate.token,
            replicate_base_url=replicate.url,
            replicate_poll_interval=0.05,
            http_port=0,
            api_token=API_TOKEN,
            new_user_bonus=10,
            limit_per_user=10,
            worker_max_jobs=50,
            job_wait_budget=0.5,
            long_wait_poll=0.2,
        )
        app = App(settings)
        await app.start()
        latencies: list[float] = []
        started = time.perf_counter()
        async with aiohttp.ClientSession() as http:

            async def submit(index: int) -> None:
                begin = time.perf_counter()
                async with http.post(
                    f"http://127.0.0.1:{app.http_port}/api/generation/text-to-image",
                    json={"telegram_id": 1 + index, "prompt": f"bench {index}"},
                    headers={"Authorization": f"Bearer {API_TOKEN}"},
                ) as response:
                    assert response.status == 202, await response.text()
                latencies.append(time.perf_counter() - begin)

            await asyncio.gather(*(submit(index) for index in range(count)))
            # Every generation ends with a "Done" message: count them as they arrive.
            await telegram.wait_for(
                lambda _: (
                    sum("Charged" in (call.text or "") for call in telegram.sent(methods=["sendMessage"]))
                    >= count
                ),
                timeout=600,
            )
        elapsed = time.perf_counter() - started
        await app.stop()
    await telegram.stop()
    await replicate.stop()
    latencies.sort()
    return {
        "accept_p50_ms": 1000 * statistics.median(latencies),
        "accept_p95_ms": 1000 * latencies[int(0.95 * (len(latencies) - 1))],
        "accept_max_ms": 1000 * latencies[-1],
        "all_settled_s": elapsed,
        "generations_per_s": count / elapsed,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=100, help="generations per plan")
    parser.add_argument("--polls", type=int, default=4, help="provider polls before a prediction ends")
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--plans", default="A,B")
    arguments = parser.parse_args()
    logger.remove()
    print(f"{'plan':<5}{'accept p50':>12}{'p95':>10}{'max':>10}{'settled':>10}{'gen/s':>8}")
    for plan in arguments.plans.split(","):
        result = await run(plan, arguments.n, arguments.database_url, arguments.polls)
        print(
            f"{plan:<5}{result['accept_p50_ms']:>10.1f}ms{result['accept_p95_ms']:>8.1f}ms"
            f"{result['accept_max_ms']:>8.1f}ms{result['all_settled_s']:>9.2f}s{result['generations_per_s']:>8.1f}"
        )
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"peak resident memory: {peak_kib / 1024:.0f} MiB")


if __name__ == "__main__":
    asyncio.run(main())
