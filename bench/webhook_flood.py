"""A webhook flood far above what the product sustains: does every update answered 200 become a
generation, do generations keep flowing during the flood, and does memory stay bounded?

    uv run --locked python -m bench.webhook_flood                     # PostgreSQL, Plan A, 32 x 15 s
    uv run --locked python -m bench.webhook_flood --database sqlite --plan B --seconds 10

It starts the fakes and `aibot run` in webhook mode as bench/hot_path.py does (instant predictions),
then `--connections` clients post Telegram-shaped `/image` updates as fast as they are answered for
`--seconds`. Like Telegram, a client sends an update that was not answered 200 (a 503 past
UPDATES_IN_FLIGHT, an error) again after its Retry-After, until it is taken; after the flood only
those are sent. It reports the answers, the product's RSS each second, the prediction creates made
during the flood, how long the last photo took after it, and, read from the database once the
product stopped, whether each update taken made exactly one generation.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.fakes_server import BOT_NAME, CREATE_NAMES
from bench.hot_path import (
    BOT_WEBHOOK_SECRET,
    BenchError,
    Config,
    Fakes,
    Postgres,
    Product,
    flush_redis,
    fresh_database,
    work_folder,
)
from bench.hot_path import Options as ProductOptions
from bench.processes import Children
from bench.waiting import recorded_generations

FIRST_USER = 8_000_001
USERS = 1000


def current_rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


async def flood(
    product: Product, updates: list[dict[str, Any]], connections: int, seconds: float
) -> dict[str, Any]:
    url = f"{product.base}/webhooks/telegram/{BOT_NAME}"
    headers = {"X-Telegram-Bot-Api-Secret-Token": BOT_WEBHOOK_SECRET}
    fresh = collections.deque(updates)
    again: collections.deque[tuple[float, dict[str, Any]]] = collections.deque()  # (not before, update)
    answers: collections.Counter[str] = collections.Counter()
    taken: set[int] = set()
    started = time.monotonic()
    flood_ends = started + seconds

    async def client(http: aiohttp.ClientSession) -> None:
        while True:
            now = time.monotonic()
            if again and again[0][0] <= now:
                update = again.popleft()[1]
            elif fresh and now < flood_ends:
                update = fresh.popleft()
            elif again:
                await asyncio.sleep(min(0.05, max(again[0][0] - now, 0.0)))
                continue
            else:
                return
            retry_after = 1.0
            try:
                async with http.post(url, json=update, headers=headers) as response:
                    await response.read()
                    answers[str(response.status)] += 1
                    if response.status == 200:
                        taken.add(int(update["update_id"]))
                        continue
                    retry_after = float(response.headers.get("Retry-After", "1"))
            except (aiohttp.ClientError, TimeoutError) as error:
                answers[type(error).__name__] += 1
            again.append((time.monotonic() + retry_after, update))

    rss: list[float] = []

    async def sample_rss() -> None:
        while True:
            rss.append(max(current_rss_mib(child.pid) for child in product.processes))
            await asyncio.sleep(1.0)

    sampler = asyncio.create_task(sample_rss())
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as http:
        await asyncio.gather(*(client(http) for _ in range(connections)))
    sampler.cancel()
    return {
        "answers": dict(answers),
        "taken": len(taken),
        "taken_ids": taken,
        "flood_seconds": seconds,
        "all_taken_after": time.monotonic() - started,
        "rss_mib": rss,
        "started": started,
        "flood_ended": flood_ends,
    }


async def run(arguments: argparse.Namespace) -> dict[str, Any]:
    config = Config(database=arguments.database, plan=arguments.plan)
    options = ProductOptions(log_level="WARNING", redis_url=arguments.redis_url)
    options.extra_env = {"UPDATES_IN_FLIGHT": str(arguments.in_flight)}
    children = Children()
    result: dict[str, Any] = {"configuration": config.label}
    try:
        with work_folder(config, arguments.keep_logs) as folder:
            if config.plan == "A":
                await flush_redis(options.redis_url)
            postgres = Postgres(options.postgres)
            database_name = f"aibot_flood_{os.getpid()}"
            database_url = await fresh_database(config, postgres, database_name, folder)
            try:
                async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as control:
                    fakes = await Fakes.start(children, folder, 0, control)
                    product = Product(config, options, folder, database_url, fakes)
                    await product.start(children, control)
                    count = arguments.connections * int(arguments.seconds) * 60
                    messages = [
                        (FIRST_USER + index % USERS, f"/image flood {index}") for index in range(count)
                    ]
                    updates: list[dict[str, Any]] = []
                    for start in range(0, count, 5000):
                        updates += await fakes.updates(messages[start : start + 5000])
                    events_before = len(await fakes.events(0))
                    flooded = await flood(product, updates, arguments.connections, arguments.seconds)
                    last_photo = await fakes.wait_photos(flooded["taken"], timeout=arguments.drain_timeout)
                    events = await fakes.events(events_before)
                    creates = sorted(start for start, _, name, _ in events if name in CREATE_NAMES)
                    in_flood = [at for at in creates if at <= flooded["flood_ended"]]
                    result.update(
                        {
                            "answers": flooded["answers"],
                            "updates taken (answered 200)": flooded["taken"],
                            "taken per second (until all were taken)": round(
                                flooded["taken"] / flooded["all_taken_after"], 1
                            ),
                            "all taken after (s)": round(flooded["all_taken_after"], 1),
                            "prediction creates during the flood": len(in_flood),
                            "last photo after the flood ended (s)": round(
                                last_photo - flooded["flood_ended"], 1
                            ),
                            "product RSS each second (MiB)": [round(value) for value in flooded["rss_mib"]],
                            "product peak RSS (MiB)": round(product.peak_rss()),
                        }
                    )
                    await product.stop(children)
                    rows = await recorded_generations(config, folder, options.postgres, database_name)
                    result["generations recorded"] = len(rows)
                    result["generations by plan/status"] = dict(
                        collections.Counter(f"{plan}/{status}" for _, _, plan, status in rows)
                    )
            finally:
                if config.database == "postgres":
                    await postgres.drop(database_name)
    except BenchError as error:
        result["error"] = str(error)
    finally:
        await children.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--database", choices=["postgres", "sqlite"], default="postgres")
    parser.add_argument("--plan", choices=["A", "B"], default="A")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--in-flight", type=int, default=40, help="the product's UPDATES_IN_FLIGHT")
    parser.add_argument("--drain-timeout", type=float, default=600.0, help="for the last photo")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/13")
    parser.add_argument("--keep-logs", type=Path)
    parser.add_argument("--json", type=Path)
    arguments = parser.parse_args()
    result = asyncio.run(run(arguments))
    text = json.dumps(result, indent=2, default=str)
    print(text)
    if arguments.json:
        arguments.json.write_text(text)


if __name__ == "__main__":
    main()
