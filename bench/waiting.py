"""Generations waiting on a slow provider, black box: what waiting costs, and whether the line is served
in order, per plan (A, B) and database (PostgreSQL, SQLite file).

    uv run --locked python -m bench.waiting                      # Plan A, PostgreSQL, 5,000 generations
    uv run --locked python -m bench.waiting --quick              # 500 generations, a 5 s window
    uv run --locked python -m bench.waiting --plans A,B --databases postgres,sqlite --json waiting.json
    uv run --locked python -m bench.waiting --quick --product-dir /tmp/old   # another tree, same bench
    uv run --locked python -m bench.waiting --env JOB_WAIT_BUDGET=1          # see below
    uv run --locked python -m bench.waiting --count 2000 --limit 2000 --env JOB_WAIT_BUDGET=1 --no-baseline
                                                                 # all in flight at the provider

For each configuration it starts, as processes of their own (bench/hot_path.py's pieces):

* the fake Telegram and Replicate (``python -m bench.fakes_server``), told at once to hold every
  prediction created ("processing" at every poll) until released;
* the product, ``aibot run`` (through ``bench/counted.py``), Plan A with its embedded worker
  (``--separate-worker``: an ``aibot worker`` too) or Plan B (``FALLBACK_MODE=true``), on a fresh
  database (a PostgreSQL database made for the run and dropped after it, or a SQLite file) and a
  flushed Redis database (13). Settings are the product's defaults but LIMIT_REPLICATE (``--limit``,
  100), LIMIT_OVERALL (at least ``--limit``, so that the provider's limit is the one that binds, and
  2,000 otherwise: the current default, also given to an older tree whose default differs), and a
  large NEW_USER_BONUS, REPLICATE_CREATES_PER_MINUTE and FLOOD_LIMIT; the provider is polled at the
  product's own REPLICATE_POLL_INTERVAL (1 s); ``--env NAME=VALUE`` changes any setting.

Then:

1. *Held alone* (unless ``--no-baseline``): LIMIT_REPLICATE generations through the HTTP API (``POST
   /api/generation/text-to-image``), one user each (LIMIT_PER_USER is 2), ``--concurrency`` requests at
   a time, each prompt naming its index; once their predictions were created (held at the provider)
   and every user was told where it stands, a window as in 3: what the held ones cost alone.
2. *Submit* the rest the same way, then *settle*: until every user got a status message (a
   generation's first look at its limits tells its user where it stands: after that, every one has
   been looked at), then ``--settle`` seconds more.
3. *Window* (``--window`` seconds): the product's CPU (all its processes, as a share of one core, and
   its busiest second), its resident memory, the requests the fakes served meanwhile (provider polls,
   creates, Telegram calls; polls per second, on average and in the busiest and quietest second), and
   the database transactions it committed. No prediction may be created meanwhile (the limit holds).
4. *Release*: the fake provider lets every prediction finish (held ones at their next poll, new ones at
   their first); until every photo was sent: the time, generations/s, when the first photo came.
5. *Order*: once the product stopped, its database (read only) tells when each generation was recorded
   (``created_at``) and its prompt; the prediction creates after the first LIMIT_REPLICATE (the ones
   that waited) are compared with that order: the longest run in order (longest non-decreasing
   subsequence) as a share, adjacent inversions, and the largest and mean displacement (places
   between where a generation was served and where its recording put it; ties in ``created_at`` are
   in order either way). The JSON keeps the whole sequence (``served_ranks``).

With the product's defaults a Plan A generation waits on the provider inside its job for
JOB_WAIT_BUDGET (30 s) before it frees the worker, so with more generations held than WORKER_MAX_JOBS
(50) the worker is full of jobs polling the provider: the first creates and the first looks of the
waiting ones queue behind them, and the window mostly measures polling. ``--env JOB_WAIT_BUDGET=1``
frees the worker at once (a held generation then comes back every LONG_WAIT_POLL), which shows what
the waiting ones themselves cost.

Prints a markdown table (one column per configuration) and, with ``--json``, writes every figure.
``--product-dir`` measures another tree (``git archive <commit> | tar -x -C DIR``) with this benchmark.
Only loopback traffic; every child process is stopped on exit, on Ctrl-C and on failure. Timing is
only measured and printed, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import itertools
import json
import os
import re
import signal
import sqlite3
import statistics
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.fakes_server import CREATE_NAMES
from bench.hot_path import (
    ROOT,
    BenchError,
    Config,
    Event,
    Fakes,
    Postgres,
    Product,
    calibration_ms,
    configurations,
    describe_tree,
    figure,
    flush_redis,
    fresh_database,
    milliseconds,
    own_cpu,
    post_generation,
    session,
    summary,
    work_folder,
)
from bench.hot_path import Options as ProductOptions
from bench.processes import Children, cpu_by_process, cpu_seconds, foreign_cpu, peak_rss_mib

FIRST_USER = 7_000_001
PROMPT = "waiting bench #{index}"
PROMPT_INDEX = re.compile(r"waiting bench #(\d+)")
POLL_NAME = "replicate GET /v1/predictions/{id}"
DEFAULT_OVERALL = 2000  # LIMIT_OVERALL's default (an older tree's may differ: it is always given)


@dataclass
class Options:
    count: int = 5000
    limit: int = 100
    window: float = 20.0
    settle: float = 3.0
    settle_timeout: float = 300.0
    concurrency: int = 16
    baseline: bool = True
    separate_worker: bool = False
    log_level: str = "INFO"
    postgres: str = "postgresql://postgres@127.0.0.1:5432/postgres"
    redis_url: str = "redis://127.0.0.1:6379/13"
    extra_env: dict[str, str] = field(default_factory=dict)
    phase_timeout: float = 900.0
    keep_logs: Path | None = None
    product_dir: Path = ROOT

    def product_options(self) -> ProductOptions:
        """hot_path's options for its Product: these settings, then the caller's own (--env)."""
        settings = {
            "LIMIT_REPLICATE": str(self.limit),
            "LIMIT_OVERALL": str(max(DEFAULT_OVERALL, self.limit)),
            **self.extra_env,
        }
        return ProductOptions(
            separate_worker=self.separate_worker,
            log_level=self.log_level,
            postgres=self.postgres,
            redis_url=self.redis_url,
            extra_env=settings,
            phase_timeout=self.phase_timeout,
            keep_logs=self.keep_logs,
            product_dir=self.product_dir,
        )


# --------------------------------------------------------------------------------------- the fakes


class HoldingFakes(Fakes):
    """The fakes, with the provider's hold and the creates' prompts (bench/fakes_server.py)."""

    @classmethod
    async def started(cls, children: Children, folder: Path, http: aiohttp.ClientSession) -> HoldingFakes:
        fakes = await cls.start(children, folder, 0, http)
        urls = {"telegram": fakes.telegram, "replicate": fakes.replicate, "control": fakes.control}
        return cls(fakes.child, urls, http)

    async def _post(self, path: str) -> dict[str, Any]:
        async with self.http.post(f"{self.control}{path}") as response:
            response.raise_for_status()
            answer: dict[str, Any] = await response.json()
            return answer

    async def hold(self) -> None:
        await self._post("/hold")

    async def release(self) -> int:
        """Answers how many predictions were created while held."""
        return int((await self._post("/release"))["held"])

    async def prompts(self, since: int = 0) -> list[str | None]:
        answer = await self._get("/creates", since=since)
        return [None if prompt is None else str(prompt) for prompt in answer["prompts"]]

    async def wait_creates(self, count: int, timeout: float) -> None:
        answer = await self._get("/wait-creates", count=count, timeout=timeout)
        if not answer["reached"]:
            raise BenchError(
                f"only {answer['creates']} of {count} predictions were created in {timeout:.0f}s"
            )

    async def chats_told(self, count: int, timeout: float) -> int:
        """Until `count` users got a message from the bot (or the timeout): how many did."""
        return int((await self._get("/chats", count=count, timeout=timeout))["chats"])


# --------------------------------------------------------------------------------------- figures


def rss_mib(pid: int) -> float:
    """A process's resident memory now (VmRSS; bench/processes.py reads the peak)."""
    with contextlib.suppress(FileNotFoundError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def memory(product: Product) -> dict[str, Any]:
    """Resident memory now and peak, per process and in all."""
    each = {
        child.name: {"rss_mib": rss_mib(child.pid), "peak_rss_mib": peak_rss_mib(child.pid)}
        for child in product.processes
    }
    return {
        "rss_mib": sum(rss_mib(child.pid) for child in product.processes),
        "peak_rss_mib": product.peak_rss(),
        "processes": each,
    }


def per_second(times: Sequence[float], low: float, high: float) -> list[int]:
    """How many of `times` fall in each whole second of [low, high)."""
    buckets = [0] * max(1, int(high - low))
    for moment in times:
        if low <= moment < high:
            buckets[min(len(buckets) - 1, int(moment - low))] += 1
    return buckets


def traffic(events: Sequence[Event], low: float, high: float) -> dict[str, Any]:
    """The requests the fakes served that started in [low, high): by kind, per second."""
    inside = [event for event in events if low <= event[0] < high]
    seconds = high - low
    names = Counter(name for _, _, name, _ in inside)
    polls = [start for start, _, name, _ in inside if name == POLL_NAME]
    telegram = [start for start, _, name, _ in inside if name.startswith("telegram")]
    poll_seconds = per_second(polls, low, high)
    return {
        "requests": len(inside),
        "requests_per_s": len(inside) / seconds,
        "creates": sum(number for name, number in names.items() if name in CREATE_NAMES),
        "polls": len(polls),
        "polls_per_s": len(polls) / seconds,
        "polls_busiest_second": max(poll_seconds),
        "polls_quietest_second": min(poll_seconds),
        "polls_per_second_stdev": statistics.pstdev(poll_seconds),
        "polls_each_second": poll_seconds,
        "telegram_calls": len(telegram),
        "telegram_calls_per_s": len(telegram) / seconds,
        "telegram_busiest_second": max(per_second(telegram, low, high)),
        "by_name": dict(sorted(names.items())),
    }


def in_order(served: Sequence[Any]) -> dict[str, Any]:
    """How far `served` (the recorded ranks of the waiters, in the order they were served; equal ranks
    are ties) is from sorted: the longest non-decreasing run as a share, adjacent inversions, and
    each one's displacement from the places its rank allows."""
    count = len(served)
    if count == 0:
        return {"waiters": 0}
    tails: list[Any] = []  # patience sorting: the longest non-decreasing subsequence
    for rank in served:
        place = bisect.bisect_right(tails, rank)
        if place == len(tails):
            tails.append(rank)
        else:
            tails[place] = rank
    ordered = sorted(served)
    displacements = []
    for position, rank in enumerate(served):
        first, last = bisect.bisect_left(ordered, rank), bisect.bisect_right(ordered, rank) - 1
        displacements.append(max(0, first - position, position - last))
    inversions = sum(1 for before, after in itertools.pairwise(served) if after < before)
    return {
        "waiters": count,
        "longest_in_order": len(tails),
        "in_order_share": len(tails) / count,
        "adjacent_inversions": inversions,
        "max_displacement": max(displacements),
        "mean_displacement": statistics.fmean(displacements),
        "displaced": sum(1 for value in displacements if value),
    }


def prompt_index(prompt: Any) -> int | None:
    found = PROMPT_INDEX.search(prompt) if isinstance(prompt, str) else None
    return int(found.group(1)) if found else None


def moment(value: Any) -> datetime | str:
    """created_at as the database gave it: a datetime (PostgreSQL) or ISO text (SQLite)."""
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    with contextlib.suppress(ValueError):
        parsed = datetime.fromisoformat(str(value))
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return str(value)


def order(prompts: Sequence[str | None], recorded: dict[int, Any], limit: int) -> dict[str, Any]:
    """The creates after the first `limit` against the order the generations were recorded in."""
    seen: set[int] = set()
    served: list[int] = []
    repeated = unknown = 0
    for prompt in prompts:
        index = prompt_index(prompt)
        if index is None or index not in recorded:
            unknown += 1
        elif index in seen:
            repeated += 1
        else:
            seen.add(index)
            served.append(index)
    first, waiters = served[:limit], served[limit:]
    # Ranks by created_at among the waiters (equal times share a rank: a tie is in order either way).
    times = sorted({recorded[index] for index in waiters})
    rank = {value: number for number, value in enumerate(times)}
    result = in_order([rank[recorded[index]] for index in waiters])
    result.update(
        {
            "creates": len(prompts),
            "first_served": len(first),
            "repeated_creates": repeated,
            "unknown_creates": unknown,
            "never_created": len(set(recorded) - seen),
            "ties_in_created_at": len(waiters) - len(times),
            # Each waiter's place in the recorded order, in the order it was served (for a closer look).
            "served_ranks": [rank[recorded[index]] for index in waiters],
        }
    )
    return result


# --------------------------------------------------------------------------------------- the database


async def recorded_generations(
    config: Config, folder: Path, postgres: str, database_name: str
) -> list[tuple[Any, Any, str, str]]:
    """(created_at, request, plan, status) of every generation, read once the product stopped."""
    query = "SELECT created_at, request, plan, status FROM generations"
    if config.database == "sqlite":

        def read() -> list[tuple[Any, ...]]:
            with contextlib.closing(sqlite3.connect(f"file:{folder}/bench.db?mode=ro", uri=True)) as db:
                return list(db.execute(query))

        rows = await asyncio.to_thread(read)
    else:
        import asyncpg

        dsn = urlsplit(postgres)._replace(path=f"/{database_name}").geturl()
        connection = await asyncpg.connect(dsn, timeout=10)
        try:
            rows = [tuple(row) for row in await connection.fetch(query)]
        finally:
            await connection.close()
    return [(created_at, request, str(plan), str(status)) for created_at, request, plan, status in rows]


def read_outcomes(rows: Sequence[tuple[Any, Any, str, str]]) -> tuple[dict[int, Any], dict[str, int]]:
    """When each generation (by its prompt's index) was recorded, and how many ended how (plan/status)."""
    recorded: dict[int, Any] = {}
    ends: Counter[str] = Counter()
    for created_at, request, plan, status in rows:
        body = json.loads(request) if isinstance(request, str | bytes) else request
        index = prompt_index(body.get("prompt") if isinstance(body, dict) else None)
        if index is not None:
            recorded[index] = moment(created_at)
        ends[f"{plan}/{status}"] += 1
    return recorded, dict(sorted(ends.items()))


# --------------------------------------------------------------------------------------- driving


async def submit(product: Product, indexes: range, concurrency: int) -> dict[str, Any]:
    """These generations over HTTP, `concurrency` at a time; one user each."""
    pending = iter(indexes)
    latencies: list[float] = []

    async def client(http: aiohttp.ClientSession) -> None:
        for index in pending:
            prompt = PROMPT.format(index=index)
            latencies.append(await post_generation(http, product, FIRST_USER + index, prompt))

    async with session(concurrency) as http:
        started = time.monotonic()
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
        seconds = time.monotonic() - started
    return {
        "generations": len(indexes),
        "concurrency": concurrency,
        "seconds": seconds,
        "accepted_per_s": len(indexes) / seconds,
        "accept_202_ms": summary([1000 * value for value in latencies]),
    }


async def cpu_share(product: Product, seconds: float) -> float:
    before = product.cpu()
    await asyncio.sleep(seconds)
    return (product.cpu() - before) / seconds


async def settle(
    product: Product, fakes: HoldingFakes, options: Options, *, creates: int, told: int, accepted_at: float
) -> dict[str, Any]:
    """Until `creates` predictions were created and `told` users were told where they stand (every
    generation submitted so far had its first look), then `settle` seconds more."""
    await fakes.wait_creates(creates, options.settle_timeout)
    created = time.monotonic()
    users = await fakes.chats_told(told, options.settle_timeout)
    everyone_told = time.monotonic()
    product.check_alive()
    await asyncio.sleep(options.settle)
    return {
        "creates_after_accepted_s": created - accepted_at,
        "users_told": users,
        "all_told_after_accepted_s": everyone_told - accepted_at if users >= told else None,
    }


async def measure_window(product: Product, fakes: HoldingFakes, options: Options) -> dict[str, Any]:
    state = await fakes.state()
    first_event = int(state["events"])
    fakes_before = cpu_seconds(fakes.child.pid)
    own_before = own_cpu()
    low = time.monotonic()
    cpu_before = product.cpu()
    commits_before = product.commits()
    # Sampled every second: an average over the window hides a product that works in bursts.
    shares = [await cpu_share(product, 1.0) for _ in range(max(1, round(options.window)))]
    cpu_after = product.cpu()
    commits_after = product.commits()
    high = time.monotonic()
    product.check_alive()
    seconds = high - low
    events = await fakes.events(first_event)
    return {
        "seconds": seconds,
        "cpu_share_of_a_core": (cpu_after - cpu_before) / seconds,
        "cpu_share_busiest_second": max(shares),
        "cpu_share_per_second": [round(share, 3) for share in shares],
        "commits_per_s": (commits_after[0] - commits_before[0]) / seconds,
        "rollbacks_per_s": (commits_after[1] - commits_before[1]) / seconds,
        "fakes_cpu_share": (cpu_seconds(fakes.child.pid) - fakes_before) / seconds,
        "bench_cpu_share": (own_cpu() - own_before) / seconds,
        "fakes": traffic(events, low, high),
        "memory": memory(product),
    }


async def release_all(product: Product, fakes: HoldingFakes, options: Options) -> dict[str, Any]:
    """Let the provider finish every prediction; until every photo was sent."""
    state = await fakes.state()
    photos = int(state["photos"])
    cpu_before = product.cpu()
    released = time.monotonic()
    held = await fakes.release()
    first_photo = await fakes.wait_photos(photos + 1, timeout=options.phase_timeout)
    last_photo = await fakes.wait_photos(photos + options.count, timeout=options.phase_timeout)
    cpu_after = product.cpu()
    seconds = last_photo - released
    return {
        "held_at_release": held,
        "seconds": seconds,
        "generations_per_s": options.count / seconds,
        "first_photo_after_s": first_photo - released,
        "cpu_ms_per_generation": 1000 * (cpu_after - cpu_before) / options.count,
        "memory": memory(product),
    }


def say(text: str) -> None:
    print(f"  {text}", file=sys.stderr, flush=True)


async def run_configuration(config: Config, options: Options, children: Children) -> dict[str, Any]:
    started = time.monotonic()
    product_options = options.product_options()
    result: dict[str, Any] = {"configuration": asdict(config), "label": config.label}
    phases: dict[str, float] = {}
    result["phase_seconds"] = phases
    with work_folder(config, options.keep_logs) as folder:
        await flush_redis(options.redis_url)
        postgres = Postgres(options.postgres)
        database_name = f"aibot_waiting_{os.getpid()}_{config.plan.lower()}"
        database_url = await fresh_database(config, postgres, database_name, folder)
        product: Product | None = None
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as control:
                phase_started = time.monotonic()
                fakes = await HoldingFakes.started(children, folder, control)
                await fakes.hold()
                product = Product(config, product_options, folder, database_url, fakes)
                if "REPLICATE_POLL_INTERVAL" not in options.extra_env:
                    # hot_path polls every 50 ms (its predictions end at the first poll); here the
                    # provider is slow, and the product's own interval is what is measured.
                    del product.settings["REPLICATE_POLL_INTERVAL"]
                health = await product.start(children, control)
                if health.get("plan") != config.plan:
                    raise BenchError(
                        f"the product runs Plan {health.get('plan')}, not Plan {config.plan}: {health}"
                    )
                result["settings"] = {
                    key: value
                    for key, value in product.settings.items()
                    if key not in ("BOT_TOKENS", "WEBHOOK_SECRET", "REPLICATE_API_TOKEN")
                }
                result["memory_at_start"] = memory(product)
                phases["start"] = time.monotonic() - phase_started
                machine_before = cpu_by_process()
                calibration_before = calibration_ms()

                held = min(options.limit, options.count)
                if options.baseline and options.count > held:
                    # First only the generations the provider's slots take, measured while held alone.
                    phase_started = time.monotonic()
                    result["submit_held"] = await submit(product, range(held), options.concurrency)
                    accepted_at = time.monotonic()
                    result["settle_held"] = await settle(
                        product, fakes, options, creates=held, told=held, accepted_at=accepted_at
                    )
                    phases["submit and settle the held ones"] = time.monotonic() - phase_started
                    phase_started = time.monotonic()
                    say(f"{held} held at the provider; measuring {options.window:.0f}s of them alone")
                    result["baseline"] = await measure_window(product, fakes, options)
                    phases["baseline window"] = time.monotonic() - phase_started
                    first = held
                else:
                    first = 0

                phase_started = time.monotonic()
                cpu_before = product.cpu()
                result["submit"] = await submit(product, range(first, options.count), options.concurrency)
                accepted_at = time.monotonic()
                phases["submit"] = accepted_at - phase_started
                say(f"{options.count - first} accepted in {phases['submit']:.0f}s; settling")
                result["settle"] = await settle(
                    product, fakes, options, creates=held, told=options.count, accepted_at=accepted_at
                )
                result["settle"]["cpu_ms_per_generation_to_settle"] = (
                    1000 * (product.cpu() - cpu_before) / (options.count - first)
                )
                phases["settle"] = time.monotonic() - accepted_at

                phase_started = time.monotonic()
                say(f"measuring {options.window:.0f}s of waiting")
                result["window"] = await measure_window(product, fakes, options)
                result["creates_before_release"] = len(await fakes.prompts())
                phases["window"] = time.monotonic() - phase_started

                phase_started = time.monotonic()
                say("released; serving the line")
                result["release"] = await release_all(product, fakes, options)
                phases["release"] = time.monotonic() - phase_started
                calibration_after = calibration_ms()
                result["calibration_ms_before_after"] = [calibration_before, calibration_after]
                prompts = await fakes.prompts()

                mine = {os.getpid(), fakes.child.pid, *(child.pid for child in product.processes)}
                shared = {"postgres", "redis-server"}
                result["other_processes_cpu_s"] = foreign_cpu(machine_before, cpu_by_process(), mine, shared)
                result["product"] = {"peak_rss_mib": product.peak_rss(), **product.log_problems()}
                result["product"]["exit_codes"] = await product.stop(children)
                await children.stop(fakes.child)
                try:
                    rows = await recorded_generations(config, folder, options.postgres, database_name)
                except Exception as error:  # the schema is the product's to change
                    result["order"] = {"unknown": f"{type(error).__name__}: {error}"}
                else:
                    recorded, result["outcomes"] = read_outcomes(rows)
                    result["order"] = order(prompts, recorded, options.limit)
        except Exception:
            if product is not None:
                for child in product.processes:
                    print(f"--- last lines of {child.name} ({child.log}) ---", file=sys.stderr)
                    print(child.log_tail(), file=sys.stderr)
            raise
        finally:
            await children.close()
            if config.database == "postgres":
                with contextlib.suppress(Exception):
                    await postgres.drop(database_name)
            with contextlib.suppress(Exception):
                await flush_redis(options.redis_url)
    result["seconds"] = time.monotonic() - started
    return result


# --------------------------------------------------------------------------------------- output


def rows(options: Options) -> list[tuple[str, Callable[[dict[str, Any]], str]]]:
    def cell(format_value: Callable[..., str], *paths: tuple[str, ...]) -> Callable[[dict[str, Any]], str]:
        def show(result: dict[str, Any]) -> str:
            values = [figure(result, *path) for path in paths]
            return "-" if any(value is None for value in values) else format_value(*values)

        return show

    def created(result: dict[str, Any]) -> str:
        phase = "settle_held" if "settle_held" in result else "settle"
        value = figure(result, phase, "creates_after_accepted_s")
        return "-" if value is None else f"{value:.1f} s"

    def told(result: dict[str, Any]) -> str:
        after = figure(result, "settle", "all_told_after_accepted_s")
        if after is not None:
            return f"{after:.1f} s"
        number = figure(result, "settle", "users_told")
        return "-" if number is None else f"only {number:,} told"

    def ends(result: dict[str, Any]) -> str:
        counts = result.get("outcomes")
        if not counts:
            return "?"
        plan = figure(result, "configuration", "plan")
        other = sum(number for key, number in counts.items() if not key.startswith(f"{plan}/"))
        not_done = sum(number for key, number in counts.items() if not key.endswith("/done"))
        return f"{other} / {not_done}"

    def in_line(result: dict[str, Any]) -> str:
        found = result.get("order") or {}
        if found.get("waiters") == 0:
            return "- (none waited)"
        if "in_order_share" not in found:
            return "?"
        return (
            f"{100 * found['in_order_share']:.1f} % / {found['adjacent_inversions']:,} / "
            f"{found['max_displacement']:,} ({found['mean_displacement']:.1f})"
        )

    def cpu(window: str) -> Callable[[dict[str, Any]], str]:
        return cell(
            lambda share, busiest: f"{100 * share:.1f} % of a core ({100 * busiest:.0f} %)",
            (window, "cpu_share_of_a_core"),
            (window, "cpu_share_busiest_second"),
        )

    def polls(window: str) -> Callable[[dict[str, Any]], str]:
        return cell(
            lambda rate, busiest, quietest: f"{rate:.1f} ({busiest} / {quietest})",
            (window, "fakes", "polls_per_s"),
            (window, "fakes", "polls_busiest_second"),
            (window, "fakes", "polls_quietest_second"),
        )

    def calls(window: str) -> Callable[[dict[str, Any]], str]:
        return cell(
            lambda rate, busiest, commits: f"{rate:.1f} ({busiest}) / {commits:.1f}",
            (window, "fakes", "telegram_calls_per_s"),
            (window, "fakes", "telegram_busiest_second"),
            (window, "commits_per_s"),
        )

    def resident(result: dict[str, Any]) -> str:
        values = [
            figure(result, *path)
            for path in (
                ("memory_at_start", "rss_mib"),
                ("baseline", "memory", "rss_mib"),
                ("window", "memory", "rss_mib"),
                ("product", "peak_rss_mib"),
            )
        ]
        return " / ".join("-" if value is None else f"{value:.0f}" for value in values) + " MiB"

    held = min(options.limit, options.count)
    waiting = options.count - held
    baseline = options.baseline and waiting > 0
    window = f"{options.window:.0f} s"
    submitted = waiting if baseline else options.count
    table = [
        (
            f"{submitted:,} submitted over HTTP ({options.concurrency} at a time): accepted/s, 202 p50 / p99",
            cell(
                lambda rate, p50, p99: f"{rate:.0f}/s, {milliseconds(p50)} / {milliseconds(p99)} ms",
                ("submit", "accepted_per_s"),
                ("submit", "accept_202_ms", "p50"),
                ("submit", "accept_202_ms", "p99"),
            ),
        ),
        (f"first {held:,} predictions created, after they were accepted", created),
        (f"every user told where it stands, after the {submitted:,} were accepted", told),
        (
            "product CPU per generation, submit to settled",
            cell(lambda value: f"{milliseconds(value)} ms", ("settle", "cpu_ms_per_generation_to_settle")),
        ),
    ]
    if baseline:
        table += [
            (f"{held:,} held alone, {window} window: product CPU (busiest second)", cpu("baseline")),
            ("that window: provider polls/s (busiest / quietest second)", polls("baseline")),
            ("that window: Telegram calls/s (busiest second) / database commits/s", calls("baseline")),
        ]
    table += [
        (
            f"{held:,} held + {waiting:,} waiting, {window} window: product CPU (busiest second)",
            cpu("window"),
        ),
        (
            "that window: provider creates (creates before release)",
            cell(
                lambda creates, held: f"{creates} ({held})",
                ("window", "fakes", "creates"),
                ("creates_before_release",),
            ),
        ),
        ("that window: provider polls/s (busiest / quietest second)", polls("window")),
        ("that window: Telegram calls/s (busiest second) / database commits/s", calls("window")),
        ("product RSS: at start / held alone / all waiting / peak", resident),
        (
            "released: all photos after (generations/s)",
            cell(
                lambda seconds, rate: f"{seconds:.1f} s ({rate:.1f}/s)",
                ("release", "seconds"),
                ("release", "generations_per_s"),
            ),
        ),
        (
            "released: first photo after",
            cell(lambda value: f"{value:.1f} s", ("release", "first_photo_after_s")),
        ),
        (
            "product CPU per generation, release to last photo",
            cell(lambda value: f"{milliseconds(value)} ms", ("release", "cpu_ms_per_generation")),
        ),
        (
            f"order of the creates after the first {held:,}: in order / adjacent inversions / "
            "max (mean) displacement",
            in_line,
        ),
        ("generations on the other plan / not done", ends),
    ]
    return table


def markdown_table(results: dict[Config, dict[str, Any]], options: Options) -> str:
    configs = list(results)
    lines = [
        "| figure | " + " | ".join(config.label for config in configs) + " |",
        "|---|" + "---|" * len(configs),
    ]
    for title, cell in rows(options):
        values = ["error" if "error" in results[config] else cell(results[config]) for config in configs]
        lines.append(f"| {title} | " + " | ".join(values) + " |")
    return "\n".join(lines)


def notes(result: dict[str, Any], options: Options) -> list[str]:
    """What makes a configuration's figures worth a second look."""
    found = []
    calibrations = figure(result, "calibration_ms_before_after") or []
    if calibrations and max(calibrations) > 1.3 * min(calibrations):
        found.append(
            "the machine's speed changed meanwhile (a fixed loop took "
            f"{min(calibrations):.0f} to {max(calibrations):.0f} ms): run it again"
        )
    foreign = figure(result, "other_processes_cpu_s")
    if foreign is not None and foreign > 5:
        found.append(f"other processes used {foreign:.0f} s of CPU meanwhile: the figures suffer")
    errors = figure(result, "product", "errors")
    if errors:
        found.append(f"the product logged {errors} error line(s)")
    creates = figure(result, "window", "fakes", "creates")
    if creates:
        found.append(f"{creates} prediction(s) were created during the window: the limit did not hold")
    before = figure(result, "creates_before_release")
    if before is not None and before > options.limit:
        found.append(f"{before} predictions were created before the release (limit {options.limit})")
    if figure(result, "settle", "all_told_after_accepted_s") is None and "settle" in result:
        found.append("not every user was told where it stands before the window")
    found_order = result.get("order") or {}
    for key in ("repeated_creates", "unknown_creates", "never_created"):
        if found_order.get(key):
            found.append(f"order: {key.replace('_', ' ')}: {found_order[key]}")
    plan = figure(result, "configuration", "plan")
    strays = {key: number for key, number in (result.get("outcomes") or {}).items() if key != f"{plan}/done"}
    if strays:
        found.append(f"not every generation was done on Plan {plan}: {strays}")
    return found


def parse_arguments(argv: Sequence[str] | None = None) -> tuple[argparse.Namespace, Options]:
    parser = argparse.ArgumentParser(
        prog="python -m bench.waiting",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--plans", default="A", help="comma-separated: A, B (default A)")
    parser.add_argument(
        "--databases", default="postgres", help="comma-separated: sqlite, postgres (default postgres)"
    )
    parser.add_argument("--count", type=int, default=5000, help="generations submitted (default 5000)")
    parser.add_argument("--limit", type=int, default=100, help="LIMIT_REPLICATE (default 100)")
    parser.add_argument("--window", type=float, default=20.0, help="seconds measured while waiting (20)")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds after settling, before the window")
    parser.add_argument(
        "--settle-timeout",
        type=float,
        default=300.0,
        help="longest wait for the first creates, then for every user to be told (default 300)",
    )
    parser.add_argument("--concurrency", type=int, default=16, help="HTTP requests at a time (default 16)")
    parser.add_argument(
        "--no-baseline",
        action="store_true",
        help="submit every generation at once (no window with the held ones alone first)",
    )
    parser.add_argument(
        "--separate-worker", action="store_true", help="Plan A: an `aibot worker` process too"
    )
    parser.add_argument("--log-level", default="INFO", help="the product's LOG_LEVEL (default INFO)")
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/13", help="flushed before and after")
    parser.add_argument(
        "--env", action="append", default=[], metavar="NAME=VALUE", help="another product setting"
    )
    parser.add_argument(
        "--phase-timeout", type=float, default=900.0, help="longest wait for all photos (default 900)"
    )
    parser.add_argument(
        "--timeout", type=float, default=1800.0, help="stop everything after this many seconds"
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run: --count 500 --window 5 --settle 1")
    parser.add_argument("--json", type=Path, help="write every figure there")
    parser.add_argument("--keep-logs", type=Path, help="keep each configuration's logs and database there")
    parser.add_argument(
        "--product-dir",
        type=Path,
        default=ROOT,
        help="the tree whose `aibot` is measured (default: this one), e.g. an export of another commit",
    )
    arguments = parser.parse_args(argv)
    if arguments.quick:
        arguments.count, arguments.window, arguments.settle = 500, 5.0, 1.0
        arguments.settle_timeout = min(arguments.settle_timeout, 120.0)
    if arguments.count < 1 or arguments.limit < 1 or arguments.concurrency < 1 or arguments.window < 1:
        parser.error("--count, --limit, --concurrency and --window must be at least 1")
    extra_env = {}
    for item in arguments.env:
        name, separator, value = item.partition("=")
        if not separator:
            parser.error(f"--env wants NAME=VALUE, not {item!r}")
        extra_env[name.upper()] = value
    options = Options(
        count=arguments.count,
        limit=arguments.limit,
        window=arguments.window,
        settle=arguments.settle,
        settle_timeout=arguments.settle_timeout,
        concurrency=arguments.concurrency,
        baseline=not arguments.no_baseline,
        separate_worker=arguments.separate_worker,
        log_level=arguments.log_level,
        postgres=arguments.postgres,
        redis_url=arguments.redis_url,
        extra_env=extra_env,
        phase_timeout=arguments.phase_timeout,
        keep_logs=arguments.keep_logs,
        product_dir=arguments.product_dir.resolve(),
    )
    return arguments, options


async def run(argv: Sequence[str] | None = None) -> int:
    arguments, options = parse_arguments(argv)
    configs = configurations(arguments)
    children = Children()
    results: dict[Config, dict[str, Any]] = {}
    began = time.monotonic()
    current = asyncio.current_task()
    if current is not None:
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, current.cancel)
    try:
        async with asyncio.timeout(arguments.timeout):
            for config in configs:
                print(f"… {config.label}", file=sys.stderr, flush=True)
                try:
                    results[config] = await run_configuration(config, options, children)
                except (BenchError, OSError, aiohttp.ClientError, TimeoutError) as error:
                    traceback.print_exc(file=sys.stderr)
                    results[config] = {"label": config.label, "error": f"{type(error).__name__}: {error}"}
                for note in notes(results[config], options):
                    print(f"  note: {note}", file=sys.stderr)
                print(f"  done in {time.monotonic() - began:.0f}s", file=sys.stderr, flush=True)
    finally:
        await children.close()
    command = " ".join(["uv run --locked python -m bench.waiting", *(sys.argv[1:] if argv is None else argv)])
    print(markdown_table(results, options))
    for config in configs:
        if "error" in results[config]:
            print(f"\n{config.label}: {results[config]['error']}")
    if arguments.json:
        document = {
            "command": command,
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": {"cpus": os.cpu_count(), "platform": sys.platform, "python": sys.version.split()[0]},
            "product": describe_tree(options.product_dir),
            "options": {
                key: str(value) if isinstance(value, Path) else value
                for key, value in asdict(options).items()
            },
            "seconds": time.monotonic() - began,
            "results": [results[config] for config in configs],
        }
        arguments.json.write_text(json.dumps(document, indent=2, default=str) + "\n")
    return 1 if any("error" in results[config] for config in configs) else 0


def main(argv: Sequence[str] | None = None) -> None:
    try:
        code = asyncio.run(run(argv))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("interrupted: every process it started is stopped", file=sys.stderr)
        code = 130
    raise SystemExit(code)


if __name__ == "__main__":
    main()
