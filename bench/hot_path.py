"""The hot path of a generation, black box: per plan (A, B) and database (SQLite file, PostgreSQL).

    uv run --locked python -m bench.hot_path                  # everything: ~5-6 minutes on 2 cores
    uv run --locked python -m bench.hot_path --quick          # a smoke run, about a minute
    uv run --locked python -m bench.hot_path --plans A --databases postgres --json results.json

For each configuration the benchmark starts, as processes of their own:

* the fake Telegram and Replicate servers (``python -m bench.fakes_server``: tests/fakes, predictions
  succeed at once: in the create's answer when it waits (``Prefer: wait``, the image models), else
  at the first poll; every request timed inside the fakes);
* the product, ``aibot run`` (through ``bench/counted.py``, which only counts database commits), in
  webhook mode, with a fresh database (a SQLite file in a temporary folder, or a PostgreSQL database
  made for the run and dropped after it) and, for Plan A, a flushed Redis database
  (``USE_QUEUE=true``, the embedded worker; ``--separate-worker`` adds an ``aibot worker``).
  Plan B is ``FALLBACK_MODE=true``. Settings are the product's defaults but for a large
  NEW_USER_BONUS, REPLICATE_CREATES_PER_MINUTE and FLOOD_LIMIT (the fake has no rate limit and the
  benchmark's users are no flood); ``--env NAME=VALUE`` changes any other.

It registers every user first (``/start``) and runs a few unmeasured generations, then measures:

1. one request at a time (``--sequential`` ``/image`` updates, each POSTed to the bot's webhook once the
   previous one is done and after a random pause, so that arrivals do not fall in step with a queue's
   polling): *end to end* is from the update handed to the bot to the end of the fake Telegram's
   sendPhoto; *overhead* is that minus the time spent inside the fakes' handlers during the same window
   (the provider's and Telegram's own time); *update in -> provider create* ends when the create request
   reaches the fake Replicate;
2. a burst: ``--burst`` ``/image`` updates from as many users, all handed over at once on Telegram's
   default 40 webhook connections: generations/s from the first update in to the last photo sent;
   product CPU time (every product process, from /proc, until it is idle again) and database commits
   per generation. Meanwhile one HTTP API request every ``--probe-ms`` (default 100) from another
   user, each on its own connection and sent on time whatever the product answers, until the burst's
   count of photos is out: the time to its 202 is what a newcomer waits while a burst runs. Their
   generations count in the burst's figures;
3. the same through the HTTP API (``POST /api/generation/text-to-image``, ``--http-burst`` requests at
   once, one connection each): the time to each 202 (p50, p99) besides generations/s, CPU and commits;
4. for Plan A, a bare arq worker running no-op jobs on the same Redis just before (``bench/bare_arq.py``).

Commits: COMMITs the product's SQLAlchemy engines issued (counted in the product process); on
PostgreSQL also the server's own count around the webhook burst, pg_stat_database.xact_commit and
xact_rollback of the run's database (read after the backends have flushed their statistics, which
takes up to 10 s of idleness: ``--pg-stats-wait``). Once the product stopped, its database tells
whether every generation of each phase ended done on the plan asked for (a burst that fell back to
Plan B is flagged). ``--profile`` runs the product under cProfile.

Prints a markdown table (one column per configuration; the figures of each burst under it) and, with
``--json``, writes every figure (p50/p90/p99/mean/max, calls to the fakes per generation, CPU of the
fakes and of the benchmark itself...). Only loopback traffic; Redis database 13 (``--redis-url``) is
flushed; every child process is stopped on exit, on Ctrl-C and on failure (and by the kernel if the
benchmark itself is killed).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import re
import resource
import shutil
import signal
import socket
import sqlite3
import statistics
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.counted import read_counter
from bench.fakes_server import BOT_NAME, BOT_TOKEN, CREATE_NAMES, REPLICATE_TOKEN
from bench.processes import (
    Child,
    Children,
    cpu_by_process,
    cpu_seconds,
    foreign_cpu,
    listen_overflows,
    peak_rss_mib,
)
from bot.http.secrets import telegram_webhook_secret

ROOT = Path(__file__).resolve().parents[1]
API_TOKEN = "bench-api-token"
WEBHOOK_SECRET = "bench-webhook-secret"
# What Telegram would send with each update of the bot: its own secret, derived from WEBHOOK_SECRET.
BOT_WEBHOOK_SECRET = telegram_webhook_secret(WEBHOOK_SECRET, BOT_NAME)
TELEGRAM_WEBHOOK_CONNECTIONS = 40  # Telegram's default max_connections for a webhook
SEQUENTIAL_USER = 5_000_001
BURST_USER = 6_000_001
PROBE_USER = 7_000_001
PROBES_MOST = 300  # users the probes of a burst may use: 30 s of probing at the default interval
DATABASES = {"sqlite": "SQLite", "postgres": "PostgreSQL"}
PLANS = ("B", "A")

Event = tuple[float, float, str, int]  # start, end (monotonic s), name, HTTP status


@dataclass(frozen=True)
class Config:
    database: str
    plan: str

    @property
    def label(self) -> str:
        return f"{DATABASES[self.database]}, Plan {self.plan}"


@dataclass
class Options:
    sequential: int = 100
    warmup: int = 5
    burst: int = 400
    http_burst: int = 400
    telegram_connections: int = TELEGRAM_WEBHOOK_CONNECTIONS
    http_connections: int = 0
    probe_ms: float = 100.0
    quiet_ms: float = 50.0
    jitter_ms: float = 50.0
    arq_jobs: int = 3000
    pg_stats_wait: float = 11.0
    separate_worker: bool = False
    polls: int = 0
    log_level: str = "INFO"
    postgres: str = "postgresql://postgres@127.0.0.1:5432/postgres"
    redis_url: str = "redis://127.0.0.1:6379/13"
    extra_env: dict[str, str] = field(default_factory=dict)
    phase_timeout: float = 300.0
    keep_logs: Path | None = None
    product_dir: Path = ROOT
    profile: bool = False


class BenchError(Exception):
    """A configuration could not be measured (the product failed, a wait timed out...)."""


# --------------------------------------------------------------------------------------- figures


def percentile(values: Sequence[float], share: float) -> float:
    """Nearest rank: the smallest value with at least `share` of the values at or below it."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(share * len(ordered)))
    return ordered[rank - 1]


def summary(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {}
    return {
        "p50": percentile(values, 0.5),
        "p90": percentile(values, 0.9),
        "p99": percentile(values, 0.99),
        "mean": statistics.fmean(values),
        "max": max(values),
    }


def busy_time(events: Sequence[Event], low: float, high: float) -> float:
    """Seconds within [low, high] when at least one fake handler was running (overlaps counted once)."""
    spans = sorted(
        (max(start, low), min(end, high)) for start, end, _, _ in events if end > low and start < high
    )
    total = 0.0
    current: tuple[float, float] | None = None
    for start, end in spans:
        if current is None or start > current[1]:
            if current is not None:
                total += current[1] - current[0]
            current = (start, end)
        else:
            current = (current[0], max(current[1], end))
    if current is not None:
        total += current[1] - current[0]
    return total


# --------------------------------------------------------------------------------------- the fakes


class Fakes:
    """The fakes' process and its control API (see bench/fakes_server.py)."""

    def __init__(self, child: Child, urls: dict[str, Any], http: aiohttp.ClientSession) -> None:
        self.child = child
        self.telegram: str = urls["telegram"]
        self.replicate: str = urls["replicate"]
        self.control: str = urls["control"]
        self.http = http

    @classmethod
    async def start(cls, children: Children, folder: Path, polls: int, http: aiohttp.ClientSession) -> Fakes:
        ready = folder / "fakes.json"
        child = await children.spawn(
            "fakes",
            [sys.executable, "-m", "bench.fakes_server", "--ready-file", str(ready), "--polls", str(polls)],
            env=base_environment(),
            cwd=ROOT,
            log=folder / "fakes.log",
        )
        for _ in range(600):
            if ready.exists():
                return cls(child, json.loads(ready.read_text()), http)
            if not child.alive():
                break
            await asyncio.sleep(0.05)
        raise BenchError("the fakes did not start:\n" + child.log_tail())

    async def _get(self, path: str, **query: Any) -> dict[str, Any]:
        async with self.http.get(
            f"{self.control}{path}", params={key: str(value) for key, value in query.items()}
        ) as response:
            response.raise_for_status()
            answer: dict[str, Any] = await response.json()
            return answer

    async def updates(self, messages: Sequence[tuple[int, str]]) -> list[dict[str, Any]]:
        payload = [{"user_id": user, "text": text} for user, text in messages]
        async with self.http.post(f"{self.control}/updates", json=payload) as response:
            response.raise_for_status()
            made: list[dict[str, Any]] = await response.json()
            return made

    async def state(self) -> dict[str, Any]:
        return await self._get("/state")

    async def events(self, since: int) -> list[Event]:
        answer = await self._get("/events", since=since)
        return [
            (float(start), float(end), str(name), int(status))
            for start, end, name, status in answer["events"]
        ]

    async def wait_photos(self, count: int, timeout: float) -> float:
        answer = await self._get("/wait-photos", count=count, timeout=timeout)
        if not answer["reached"]:
            raise BenchError(f"only {answer['photos']} of {count} photos were sent within {timeout:.0f}s")
        return float(answer["end"])

    async def wait_quiet(self, milliseconds: float, timeout: float = 30.0) -> None:
        answer = await self._get("/wait-quiet", ms=milliseconds, timeout=timeout)
        if not answer["reached"]:
            raise BenchError(f"the fakes did not go quiet for {milliseconds:.0f} ms within {timeout:.0f}s")

    async def wait_chats(self, count: int, timeout: float) -> None:
        """Until the bot sent a message to `count` distinct chats."""
        answer = await self._get("/chats", count=count, timeout=timeout)
        if not answer["reached"]:
            raise BenchError(
                f"the bot wrote to only {answer['chats']} of {count} users within {timeout:.0f}s"
            )


# --------------------------------------------------------------------------------------- the product


def base_environment(python_path: Path = ROOT) -> dict[str, str]:
    """A clean environment: nothing of the caller's shell may change a product setting."""
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "SYSTEMROOT")
    env = {key: os.environ[key] for key in keep if key in os.environ}
    env["PYTHONPATH"] = str(python_path)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class Product:
    """`aibot run` (and, with --separate-worker, `aibot worker`) for one configuration."""

    def __init__(
        self, config: Config, options: Options, folder: Path, database_url: str, fakes: Fakes
    ) -> None:
        self.config = config
        self.options = options
        self.folder = folder
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.processes: list[Child] = []
        self.counter_files: list[Path] = []
        # The share of a core the product uses with nothing to do (its queue polling), read once ready.
        self.idle_share = 0.0
        # `aibot run` from its spawn to its first /healthz 200 (migrations included), and its CPU by then.
        self.start_s = 0.0
        self.start_cpu_s = 0.0
        self.settings = {
            "BOT_TOKENS": json.dumps({BOT_NAME: BOT_TOKEN}),
            "TELEGRAM_API_URL": fakes.telegram,
            "BOT_MODE": "webhook",
            # Only told to the fake Telegram (which does not call it): the benchmark POSTs the updates.
            "WEBHOOK_BASE_URL": "https://aibot-bench.invalid",
            "WEBHOOK_SECRET": WEBHOOK_SECRET,
            "REPLICATE_API_TOKEN": REPLICATE_TOKEN,
            "REPLICATE_BASE_URL": fakes.replicate,
            "REPLICATE_POLL_INTERVAL": "0.05",
            "DATABASE_URL": database_url,
            "REDIS_URL": options.redis_url,
            "USE_QUEUE": "true" if config.plan == "A" else "false",
            "FALLBACK_MODE": "false" if config.plan == "A" else "true",
            "EMBEDDED_WORKER": "false" if options.separate_worker else "true",
            "HTTP_HOST": "127.0.0.1",
            "HTTP_PORT": str(self.port),
            "API_TOKEN": API_TOKEN,
            "NEW_USER_BONUS": "1000000",
            # The fake has no rate limit; Replicate's real one (600/min) would cap a burst at 10/s.
            "REPLICATE_CREATES_PER_MINUTE": "1000000",
            # Benchmark users send more than a human would: anti-flood is not what is measured.
            "FLOOD_LIMIT": "1000000",
            "LOG_LEVEL": options.log_level,
            **options.extra_env,
        }

    async def start(self, children: Children, http: aiohttp.ClientSession) -> dict[str, Any]:
        """`aibot run`, ready (migrated, serving); then `aibot worker` if asked for. Answers /healthz."""
        spawned = time.monotonic()
        await self._spawn(children, "run")
        health = await self.wait_ready(http)
        self.start_s, self.start_cpu_s = time.monotonic() - spawned, self.cpu()
        if self.options.separate_worker and self.config.plan == "A":
            await self._spawn(children, "worker")
        before = self.cpu()
        await asyncio.sleep(IDLE_SAMPLE)
        # Capped: startup work still going on must not pass for idleness.
        self.idle_share = min(IDLE_MOST, (self.cpu() - before) / IDLE_SAMPLE)
        return health

    async def _spawn(self, children: Children, command: str) -> None:
        counter = self.folder / f"commits-{command}.bin"
        env = {
            **base_environment(self.options.product_dir),
            **self.settings,
            "BENCH_COUNTER_FILE": str(counter),
        }
        if self.options.profile:
            env["BENCH_PROFILE_FILE"] = str(self.folder / f"profile-{command}.pstats")
        # By path, so that --product-dir (another tree, first on the path) can be measured.
        child = await children.spawn(
            f"aibot {command}",
            [sys.executable, str(ROOT / "bench" / "counted.py"), command],
            env=env,
            cwd=self.folder,
            log=self.folder / f"aibot-{command}.log",
        )
        self.processes.append(child)
        self.counter_files.append(counter)

    async def wait_ready(self, http: aiohttp.ClientSession, timeout: float = 120.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for child in self.processes:
                if not child.alive():
                    raise BenchError(f"{child.name} exited at start:\n{child.log_tail()}")
            with contextlib.suppress(aiohttp.ClientError):
                # With the API token: the plan in force is among the details, not public.
                auth = {"Authorization": f"Bearer {API_TOKEN}"}
                async with http.get(f"{self.base}/healthz", headers=auth) as response:
                    if response.status == 200:
                        health: dict[str, Any] = await response.json()
                        return health
            await asyncio.sleep(0.1)
        raise BenchError("aibot run did not answer /healthz in time:\n" + self.processes[0].log_tail())

    def cpu(self) -> float:
        return sum(cpu_seconds(child.pid) for child in self.processes)

    def commits(self) -> tuple[int, int, int]:
        """Commits, rollbacks and Redis round trips so far, over the product's processes."""
        counts = [read_counter(path) for path in self.counter_files]
        return (
            sum(count[0] for count in counts),
            sum(count[1] for count in counts),
            sum(count[2] for count in counts),
        )

    def peak_rss(self) -> float:
        return sum(peak_rss_mib(child.pid) for child in self.processes)

    def check_alive(self) -> None:
        for child in self.processes:
            if not child.alive():
                raise BenchError(f"{child.name} died:\n{child.log_tail()}")

    def log_problems(self) -> dict[str, int]:
        errors = warnings = 0
        for child in self.processes:
            with contextlib.suppress(FileNotFoundError):
                for line in child.log.read_text(errors="replace").splitlines():
                    if re.search(r"\|\s*(ERROR|CRITICAL)\s*\|", line) or line.startswith("Traceback"):
                        errors += 1
                    elif re.search(r"\|\s*WARNING\s*\|", line):
                        warnings += 1
        return {"errors": errors, "warnings": warnings}

    async def stop(self, children: Children) -> list[int | None]:
        return [await children.stop(child, grace=30.0) for child in reversed(self.processes)]


# --------------------------------------------------------------------------------------- databases


class Postgres:
    def __init__(self, dsn: str) -> None:
        self.dsn = dsn

    async def _execute(self, statement: str) -> None:
        import asyncpg

        connection = await asyncpg.connect(self.dsn, timeout=10)
        try:
            await connection.execute(statement)
        finally:
            await connection.close()

    async def create(self, name: str) -> None:
        await self._execute(f'CREATE DATABASE "{name}"')

    async def drop(self, name: str) -> None:
        await self._execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    async def transactions(self, name: str, settle: float) -> tuple[int, int, int]:
        """(xact_commit, xact_rollback, sessions) of database `name` as the server counts them, once
        every backend has flushed its pending statistics (a backend idle for 10 s does); sessions are
        the connections opened to it."""
        import asyncpg

        await asyncio.sleep(settle)
        connection = await asyncpg.connect(self.dsn, timeout=10)
        try:
            await connection.execute("SELECT pg_stat_clear_snapshot()")
            row = await connection.fetchrow(
                "SELECT xact_commit, xact_rollback, sessions FROM pg_stat_database WHERE datname = $1", name
            )
        finally:
            await connection.close()
        if row is None:
            raise BenchError(f"no statistics for database {name}")
        return int(row["xact_commit"]), int(row["xact_rollback"]), int(row["sessions"])


async def fresh_database(config: Config, postgres: Postgres, name: str, folder: Path) -> str:
    """The product's DATABASE_URL for a run: a PostgreSQL database made anew (the caller drops it), or
    a SQLite file in the run's folder."""
    if config.database != "postgres":
        return f"sqlite+aiosqlite:///{folder}/bench.db"
    await postgres.drop(name)
    await postgres.create(name)
    return urlsplit(postgres.dsn)._replace(scheme="postgresql+asyncpg", path=f"/{name}").geturl()


async def flush_redis(url: str) -> None:
    import redis.asyncio as aioredis

    client = aioredis.from_url(url)
    try:
        await client.flushdb()
    finally:
        await client.aclose()


# --------------------------------------------------------------------------------------- driving


async def post_update(http: aiohttp.ClientSession, product: Product, update: dict[str, Any]) -> float:
    started = time.monotonic()
    async with http.post(
        f"{product.base}/webhooks/telegram/{BOT_NAME}",
        json=update,
        headers={"X-Telegram-Bot-Api-Secret-Token": BOT_WEBHOOK_SECRET},
    ) as response:
        await response.read()
        if response.status != 200:
            raise BenchError(f"the webhook answered {response.status}")
    return time.monotonic() - started


async def post_generation(http: aiohttp.ClientSession, product: Product, user: int, prompt: str) -> float:
    started = time.monotonic()
    async with http.post(
        f"{product.base}/api/generation/text-to-image",
        json={"telegram_id": user, "bot_name": BOT_NAME, "prompt": prompt, "num_images": 1},
        headers={"Authorization": f"Bearer {API_TOKEN}"},
    ) as response:
        body = await response.text()
        if response.status != 202:
            raise BenchError(f"POST /api/generation/text-to-image answered {response.status}: {body[:300]}")
    return time.monotonic() - started


def session(connections: int) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=connections, force_close=False),
        timeout=aiohttp.ClientTimeout(total=120),
    )


async def warm_up(product: Product, fakes: Fakes, users: Sequence[int], options: Options) -> None:
    """Register every user (/start), then a few generations nobody measures."""
    updates = await fakes.updates([(user, "/start") for user in users])
    async with session(20) as http:
        await asyncio.gather(*(post_update(http, product, update) for update in updates))
    await fakes.wait_chats(len(users), timeout=options.phase_timeout)
    await wait_idle(product, options.phase_timeout)
    await sequential_generations(product, fakes, users, options.warmup, "warm-up", options)


async def sequential_generations(
    product: Product, fakes: Fakes, users: Sequence[int], count: int, label: str, options: Options
) -> tuple[list[tuple[float, float]], int]:
    """`count` /image updates, one at a time; answers each (update in, photo sent) and where the
    fakes' events of the phase begin."""
    updates = await fakes.updates(
        [(users[index % len(users)], f"/image {label} {index}") for index in range(count)]
    )
    state = await fakes.state()
    photos, first_event = int(state["photos"]), int(state["events"])
    windows: list[tuple[float, float]] = []
    async with session(1) as http:
        for index, update in enumerate(updates):
            started = time.monotonic()
            await post_update(http, product, update)
            sent = await fakes.wait_photos(photos + index + 1, timeout=60)
            windows.append((started, sent))
            # The rest of the generation (the final message, settling) ends before the next begins;
            # then a random pause, as users do not arrive in step with a queue's polling.
            await fakes.wait_quiet(options.quiet_ms)
            await asyncio.sleep(random.uniform(0, options.jitter_ms / 1000))
    return windows, first_event


async def measure_sequential(
    product: Product, fakes: Fakes, users: Sequence[int], options: Options
) -> dict[str, Any]:
    calibration_before = calibration_ms()
    cpu_before = product.cpu()
    commits_before = product.commits()
    windows, first_event = await sequential_generations(
        product, fakes, users, options.sequential, "one", options
    )
    cpu_after = product.cpu()
    commits_after = product.commits()
    calibration_after = calibration_ms()
    events = await fakes.events(first_event)
    end_to_end, overhead, inside, to_create = [], [], [], []
    calls: Counter[str] = Counter()
    steps: dict[tuple[int, str], list[tuple[float, float]]] = {}
    for started, sent in windows:
        mine = [event for event in events if event[1] > started and event[0] < sent]
        for order, (start, end, name, _) in enumerate(sorted(mine)):
            steps.setdefault((order, name), []).append((start - started, end - started))
        fake_time = busy_time(mine, started, sent)
        end_to_end.append(1000 * (sent - started))
        inside.append(1000 * fake_time)
        overhead.append(1000 * (sent - started - fake_time))
        creates = [event[0] for event in mine if event[2] in CREATE_NAMES and event[0] >= started]
        if creates:
            to_create.append(1000 * (min(creates) - started))
        calls.update(event[2] for event in events if started <= event[0] < sent)
    count = len(windows)
    return {
        "generations": count,
        "overhead_ms": summary(overhead),
        "end_to_end_ms": summary(end_to_end),
        "inside_fakes_ms": summary(inside),
        "update_to_create_ms": summary(to_create),
        "fake_calls_per_generation": {
            name: round(number / count, 2) for name, number in sorted(calls.items())
        },
        "cpu_ms_per_generation": 1000 * (cpu_after - cpu_before) / count,
        "commits_per_generation": (commits_after[0] - commits_before[0]) / count,
        "rollbacks_per_generation": (commits_after[1] - commits_before[1]) / count,
        "redis_round_trips_per_generation": (commits_after[2] - commits_before[2]) / count,
        "timeline_ms": timeline(steps, count),
        "calibration_ms_before_after": [calibration_before, calibration_after],
    }


def timeline(steps: dict[tuple[int, str], list[tuple[float, float]]], count: int) -> list[dict[str, Any]]:
    """Where the time of one request goes: each call to the fakes in the order it came (the n-th
    call of a generation, if at least half the generations made one), its median start and end
    from the update handed over."""
    rows = []
    for (order, name), spans in sorted(steps.items()):
        if len(spans) * 2 < count:
            continue
        rows.append(
            {
                "order": order,
                "name": name,
                "share": round(len(spans) / count, 2),
                "start_p50": round(1000 * percentile([start for start, _ in spans], 0.5), 2),
                "end_p50": round(1000 * percentile([end for _, end in spans], 0.5), 2),
            }
        )
    return rows


async def probe_accepts(
    product: Product, users: Sequence[int], interval_ms: float, done: asyncio.Event
) -> list[tuple[float, float]]:
    """One HTTP generation request every `interval_ms`, each on a connection of its own and without
    waiting for the previous answer (arrivals do not slow down when the product does), until `done`
    or out of users: when each was sent, and the time it took to its 202."""
    tasks: list[asyncio.Task[float]] = []
    sent: list[float] = []
    async with session(0) as http:
        for user in users:
            if done.is_set():
                break
            sent.append(time.monotonic())
            tasks.append(asyncio.create_task(post_generation(http, product, user, f"probe {user}")))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), interval_ms / 1000)
        return list(zip(sent, await asyncio.gather(*tasks), strict=True))


async def measure_burst(
    product: Product,
    fakes: Fakes,
    users: Sequence[int],
    options: Options,
    *,
    over_http: bool,
    server: ServerCount | None,
    probe_users: Sequence[int] = (),
) -> dict[str, Any]:
    """All at once; `server` (PostgreSQL) is read before, unless the previous burst left its reading.
    With `probe_users`, one more HTTP request every --probe-ms while the burst's generations run
    (until as many photos as the burst has were sent): how long a newcomer waits for its 202."""
    count = len(users)
    updates = [] if over_http else await fakes.updates([(user, f"/image burst {user}") for user in users])
    if server is not None and server.last is None:
        await server.read()
    calibration_before = calibration_ms()
    state = await fakes.state()
    photos, first_event = int(state["photos"]), int(state["events"])
    fakes_cpu_before, own_before = cpu_seconds(fakes.child.pid), own_cpu()
    cpu_before, commits_before = product.cpu(), product.commits()
    overflows_before = listen_overflows()
    connections = options.http_connections if over_http else options.telegram_connections
    burst_over = asyncio.Event()
    async with session(connections) as http:
        started = time.monotonic()
        probing = (
            asyncio.create_task(probe_accepts(product, probe_users, options.probe_ms, burst_over))
            if probe_users and options.probe_ms > 0
            else None
        )
        if over_http:
            latencies = await asyncio.gather(
                *(post_generation(http, product, user, f"http burst {user}") for user in users)
            )
        else:
            latencies = await asyncio.gather(*(post_update(http, product, update) for update in updates))
        accepted = time.monotonic()
        last_photo = await fakes.wait_photos(photos + count, timeout=options.phase_timeout)
        burst_over.set()
        probes = await probing if probing is not None else []
        if probes:
            # The probes' own generations are part of the work done: all of them counted.
            last_photo = await fakes.wait_photos(photos + count + len(probes), timeout=options.phase_timeout)
    await wait_idle(product, options.phase_timeout)
    cpu_after, commits_after = product.cpu(), product.commits()
    fakes_cpu_after, own_after = cpu_seconds(fakes.child.pid), own_cpu()
    product.check_alive()
    calls = Counter(name for _, _, name, _ in await fakes.events(first_event))
    calibration_after = calibration_ms()
    done = count + len(probes)
    result: dict[str, Any] = {
        "generations": done,
        "connections": connections or "unlimited",
        "seconds": last_photo - started,
        "generations_per_s": done / (last_photo - started),
        "all_accepted_after_s": accepted - started,
        ("accept_202_ms" if over_http else "webhook_answer_ms"): summary(
            [1000 * value for value in latencies]
        ),
        "cpu_ms_per_generation": 1000 * (cpu_after - cpu_before) / done,
        "fakes_cpu_ms_per_generation": 1000 * (fakes_cpu_after - fakes_cpu_before) / done,
        "bench_cpu_ms_per_generation": 1000 * (own_after - own_before) / done,
        "commits_per_generation": (commits_after[0] - commits_before[0]) / done,
        "rollbacks_per_generation": (commits_after[1] - commits_before[1]) / done,
        "redis_round_trips_per_generation": (commits_after[2] - commits_before[2]) / done,
        "listen_queue_overflows": listen_overflows() - overflows_before,
        "calibration_ms_before_after": [calibration_before, calibration_after],
        "fake_calls_per_generation": {
            name: round(number / done, 2) for name, number in sorted(calls.items())
        },
    }
    if probes:
        result["probe_accept_202_ms"] = {
            "interval_ms": options.probe_ms,
            "count": len(probes),
            **summary([1000 * latency for _, latency in probes]),
            # Sent while the burst's own updates were still being accepted, and after: the first wait
            # behind those accepts; the others only behind the burst's runs.
            "while_accepting": summary([1000 * latency for at, latency in probes if at <= accepted]),
            "after_accepted": summary([1000 * latency for at, latency in probes if at > accepted]),
            # When each was sent (s since the burst began) and its 202 (ms): where in the burst they wait.
            "each": [(round(at - started, 3), round(1000 * latency, 1)) for at, latency in probes],
        }
    if server is not None and server.last is not None:
        before = server.last
        after = await server.read()
        result["server_commits_per_generation"] = (after[0] - before[0]) / done
        result["server_rollbacks_per_generation"] = (after[1] - before[1]) / done
        # A pool too small for the burst opens (and closes) connections all along: each costs a
        # connection's start and the preparing again of every statement on it.
        result["server_connections_opened"] = after[2] - before[2]
    return result


@dataclass
class ServerCount:
    """PostgreSQL's own count of the run database's transactions, the last reading kept."""

    postgres: Postgres
    database: str
    settle: float
    last: tuple[int, int, int] | None = None

    async def read(self) -> tuple[int, int, int]:
        self.last = await self.postgres.transactions(self.database, self.settle)
        return self.last


async def wait_idle(product: Product, timeout: float, window: float = 0.3, busy: float = 0.1) -> None:
    """Until the product's processes use less than `busy` of a core over `window` seconds, above what
    they use with nothing to do: the tail of the work (settling, final messages) is over. Idle, a
    product still polls its queue now and then, which on a slowed machine alone can exceed `busy`."""
    busy += product.idle_share
    deadline = time.monotonic() + timeout
    before = product.cpu()
    while time.monotonic() < deadline:
        await asyncio.sleep(window)
        after = product.cpu()
        if after - before < busy * window:
            return
        before = after
    raise BenchError(f"the product was still busy {timeout:.0f}s after the work was done")


# Seconds the product is watched, once ready, for what it uses with nothing to do.
IDLE_SAMPLE = 1.0
IDLE_MOST = 0.25


def calibration_ms() -> float:
    """How long a fixed bit of pure Python takes here and now (best of 3): on a shared virtual machine
    the same work can take twice as long at times, and every figure with it."""

    def once() -> float:
        started = time.perf_counter()
        sum(number * number for number in range(500_000))
        return 1000 * (time.perf_counter() - started)

    return min(once() for _ in range(3))


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def bare_arq(children: Children, folder: Path, options: Options) -> dict[str, Any]:
    log = folder / "bare-arq.log"
    child = await children.spawn(
        "bare arq",
        [
            sys.executable,
            "-m",
            "bench.bare_arq",
            "--redis-url",
            options.redis_url,
            "--jobs",
            str(options.arq_jobs),
        ],
        env=base_environment(),
        cwd=ROOT,
        log=log,
    )
    try:
        code = await asyncio.wait_for(child.process.wait(), timeout=120)
    finally:
        await children.stop(child)
    lines = log.read_text(errors="replace").strip().splitlines()
    if code != 0 or not lines:
        raise BenchError("bare arq failed:\n" + child.log_tail())
    result: dict[str, Any] = json.loads(lines[-1])
    return result


# --------------------------------------------------------------------------------------- outcomes


async def outcomes(config: Config, folder: Path, postgres: str, database_name: str) -> dict[str, Any]:
    """How each phase's generations ended and on which plan, read from the product's database once it
    stopped (the one place the benchmark looks inside: a burst that fell back to the other plan, or
    generations that failed, must not pass for figures of the plan asked for)."""
    query = "SELECT request_key, chat_id, plan, status FROM generations"
    try:
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
    except Exception as error:  # the schema is the product's to change: then this is simply unknown
        return {"unknown": f"{type(error).__name__}: {error}"}
    counted: dict[str, Counter[str]] = {}
    for request_key, chat_id, plan, status in rows:
        if chat_id is not None and int(chat_id) >= PROBE_USER:
            phase = "probes"
        elif str(request_key).startswith("http:"):
            phase = "http_burst"
        elif chat_id is not None and int(chat_id) >= BURST_USER:
            phase = "telegram_burst"
        else:
            phase = "sequential"
        counted.setdefault(phase, Counter())[f"{plan}/{status}"] += 1
    return {phase: dict(sorted(counter.items())) for phase, counter in sorted(counted.items())}


# --------------------------------------------------------------------------------------- one configuration


@contextlib.contextmanager
def work_folder(config: Config, keep: Path | None) -> Iterator[Path]:
    """Where a configuration's logs and SQLite database go: a temporary folder, or one kept."""
    if keep is None:
        with tempfile.TemporaryDirectory(prefix="aibot-bench-") as name:
            yield Path(name)
        return
    folder = keep / f"{config.database}-{config.plan}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    yield folder


async def run_configuration(config: Config, options: Options, children: Children) -> dict[str, Any]:
    started = time.monotonic()
    result: dict[str, Any] = {"configuration": asdict(config), "label": config.label}
    phases: dict[str, float] = {}
    result["phase_seconds"] = phases
    with work_folder(config, options.keep_logs) as folder:
        if config.plan == "A":
            await flush_redis(options.redis_url)
            phase_started = time.monotonic()
            result["bare_arq"] = await bare_arq(children, folder, options)
            phases["bare_arq"] = time.monotonic() - phase_started
            await flush_redis(options.redis_url)
        postgres = Postgres(options.postgres)
        database_name = f"aibot_bench_{os.getpid()}_{config.plan.lower()}"
        database_url = await fresh_database(config, postgres, database_name, folder)
        product: Product | None = None
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as control:
                phase_started = time.monotonic()
                fakes = await Fakes.start(children, folder, options.polls, control)
                product = Product(config, options, folder, database_url, fakes)
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
                sequential_users = [
                    SEQUENTIAL_USER + index for index in range(max(10, options.sequential // 10))
                ]
                burst_users = [BURST_USER + index for index in range(max(options.burst, options.http_burst))]
                probe_users = [
                    PROBE_USER + index for index in range(PROBES_MOST if options.probe_ms > 0 else 0)
                ]
                phases["start"] = time.monotonic() - phase_started
                # Other work on the machine skews every figure: how much CPU it took is recorded.
                machine_before = cpu_by_process()
                phase_started = time.monotonic()
                await warm_up(product, fakes, [*sequential_users, *burst_users, *probe_users], options)
                phases["warm-up"] = time.monotonic() - phase_started
                if options.sequential:
                    phase_started = time.monotonic()
                    result["sequential"] = await measure_sequential(product, fakes, sequential_users, options)
                    phases["sequential"] = time.monotonic() - phase_started
                server = None
                if config.database == "postgres" and options.pg_stats_wait > 0:
                    server = ServerCount(postgres, database_name, options.pg_stats_wait)
                for name, size, over_http in (
                    ("telegram_burst", options.burst, False),
                    ("http_burst", options.http_burst, True),
                ):
                    if size:
                        # Told as it starts: a profiler can be pointed at the product for this phase.
                        print(f"  {name} of {size}", file=sys.stderr, flush=True)
                        phase_started = time.monotonic()
                        # PostgreSQL's own count needs 10 s of idleness before and after: around the
                        # webhook burst only, to keep the run short (the engines count both).
                        result[name] = await measure_burst(
                            product,
                            fakes,
                            burst_users[:size],
                            options,
                            over_http=over_http,
                            server=None if over_http else server,
                            probe_users=() if over_http else probe_users,
                        )
                        phases[name] = time.monotonic() - phase_started
                mine = {os.getpid(), fakes.child.pid, *(child.pid for child in product.processes)}
                shared = {"postgres", "redis-server"}
                result["other_processes_cpu_s"] = foreign_cpu(machine_before, cpu_by_process(), mine, shared)
                result["product"] = {
                    "peak_rss_mib": product.peak_rss(),
                    "start_s": product.start_s,
                    "start_cpu_s": product.start_cpu_s,
                    **product.log_problems(),
                }
                exit_codes = await product.stop(children)
                result["product"]["exit_codes"] = exit_codes
                await children.stop(fakes.child)
                result["outcomes"] = await outcomes(config, folder, options.postgres, database_name)
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
            if config.plan == "A":
                with contextlib.suppress(Exception):
                    await flush_redis(options.redis_url)
    result["seconds"] = time.monotonic() - started
    return result


# --------------------------------------------------------------------------------------- output


def milliseconds(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "-"
    return f"{value:.1f}" if value < 10 else f"{value:.0f}"


def figure(result: dict[str, Any], *path: str) -> Any:
    value: Any = result
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def rows(options: Options) -> list[tuple[str, Callable[[dict[str, Any]], str]]]:
    def sequential_overhead(result: dict[str, Any]) -> str:
        p50, p99 = (
            figure(result, "sequential", "overhead_ms", "p50"),
            figure(result, "sequential", "overhead_ms", "p99"),
        )
        return "-" if p50 is None else f"{milliseconds(p50)} / {milliseconds(p99)} ms"

    def to_create(result: dict[str, Any]) -> str:
        value = figure(result, "sequential", "update_to_create_ms", "p50")
        return "-" if value is None else f"{milliseconds(value)} ms"

    def end_to_end(result: dict[str, Any]) -> str:
        p50 = figure(result, "sequential", "end_to_end_ms", "p50")
        inside = figure(result, "sequential", "inside_fakes_ms", "p50")
        return "-" if p50 is None else f"{milliseconds(p50)} ms ({milliseconds(inside)} ms in the fakes)"

    def rate(burst: str) -> Callable[[dict[str, Any]], str]:
        def cell(result: dict[str, Any]) -> str:
            value = figure(result, burst, "generations_per_s")
            return "-" if value is None else f"{value:.1f}"

        return cell

    def accept(result: dict[str, Any]) -> str:
        p50, p99 = (
            figure(result, "http_burst", "accept_202_ms", "p50"),
            figure(result, "http_burst", "accept_202_ms", "p99"),
        )
        return "-" if p99 is None else f"{milliseconds(p50)} / {milliseconds(p99)} ms"

    def probe(*part: str) -> Callable[[dict[str, Any]], str]:
        def cell(result: dict[str, Any]) -> str:
            p50, p99 = (
                figure(result, "telegram_burst", "probe_accept_202_ms", *part, "p50"),
                figure(result, "telegram_burst", "probe_accept_202_ms", *part, "p99"),
            )
            return "-" if p99 is None else f"{milliseconds(p50)} / {milliseconds(p99)} ms"

        return cell

    def per_generation(burst: str, key: str, unit: str) -> Callable[[dict[str, Any]], str]:
        def cell(result: dict[str, Any]) -> str:
            value = figure(result, burst, key)
            if value is None:
                return "-"
            return f"{milliseconds(value)} ms" if unit == "ms" else f"{value:.1f}"

        return cell

    def connections_opened(result: dict[str, Any]) -> str:
        opened = figure(result, "telegram_burst", "server_connections_opened")
        return "-" if opened is None else str(opened)

    def transactions(burst: str) -> Callable[[dict[str, Any]], str]:
        """Commits / rollbacks: the server's count on PostgreSQL (the engines' in brackets), else the
        engines' count."""

        def cell(result: dict[str, Any]) -> str:
            engine = [figure(result, burst, f"{kind}_per_generation") for kind in ("commits", "rollbacks")]
            server = [
                figure(result, burst, f"server_{kind}_per_generation") for kind in ("commits", "rollbacks")
            ]
            if None in engine:
                return "-"
            if None in server:
                return f"{engine[0]:.1f} / {engine[1]:.1f}"
            return f"{server[0]:.1f} / {server[1]:.1f} ({engine[0]:.1f} / {engine[1]:.1f})"

        return cell

    def arq(result: dict[str, Any]) -> str:
        value = figure(result, "bare_arq", "jobs_per_s")
        return "-" if value is None else f"{value:,.0f}"

    def memory(result: dict[str, Any]) -> str:
        value = figure(result, "product", "peak_rss_mib")
        return "-" if value is None else f"{value:.0f} MiB"

    def start(result: dict[str, Any]) -> str:
        seconds, cpu = figure(result, "product", "start_s"), figure(result, "product", "start_cpu_s")
        return "-" if seconds is None or cpu is None else f"{seconds:.1f} s ({cpu:.1f} s)"

    burst, http_burst = options.burst, options.http_burst
    table: list[tuple[str, Callable[[dict[str, Any]], str]]] = []
    if options.sequential:
        table += [
            ("overhead p50 / p99, one request at a time", sequential_overhead),
            ("update in → provider create, p50", to_create),
            ("end to end p50, one request at a time", end_to_end),
        ]
    if burst:
        table += [
            (f"{burst} `/image` at once (webhook): generations/s", rate("telegram_burst")),
            (
                "product CPU per generation (that burst)",
                per_generation("telegram_burst", "cpu_ms_per_generation", "ms"),
            ),
            ("commits / rollbacks per generation (that burst)", transactions("telegram_burst")),
            (
                "Redis round trips per generation (that burst)",
                per_generation("telegram_burst", "redis_round_trips_per_generation", "count"),
            ),
            ("PostgreSQL connections opened (that burst)", connections_opened),
        ]
        if options.probe_ms > 0:
            table += [
                (f"HTTP accept (202) p50 / p99, one every {options.probe_ms:g} ms during it", probe()),
                ("  of those, sent while its updates were being accepted", probe("while_accepting")),
                ("  sent after", probe("after_accepted")),
            ]
    if http_burst:
        table += [
            (f"{http_burst} over HTTP at once: generations/s", rate("http_burst")),
            ("HTTP accept (202) p50 / p99 (that burst)", accept),
            (
                "product CPU per generation (that burst)",
                per_generation("http_burst", "cpu_ms_per_generation", "ms"),
            ),
            ("commits / rollbacks per generation (that burst)", transactions("http_burst")),
            (
                "Redis round trips per generation (that burst)",
                per_generation("http_burst", "redis_round_trips_per_generation", "count"),
            ),
        ]

    def strays(result: dict[str, Any]) -> str:
        """Generations of the bursts that ran on the other plan, and those that did not end done."""
        mix = result.get("outcomes", {})
        if "unknown" in mix or not mix:
            return "?"
        plan = result["configuration"]["plan"]
        other = not_done = 0
        for phase in ("telegram_burst", "http_burst"):
            for key, number in mix.get(phase, {}).items():
                ran_on, _, status = key.partition("/")
                other += number if ran_on != plan else 0
                not_done += number if status != "done" else 0
        return f"{other} / {not_done}"

    table += [
        ("bursts: generations on the other plan / not done", strays),
        ("bare arq no-op jobs/s, same Redis", arq),
        ("product peak RSS", memory),
        ("`aibot run` start: spawn → /healthz 200 (its CPU by then)", start),
    ]
    return table


def markdown_table(results: dict[Config, dict[str, Any]], options: Options) -> str:
    configs = list(results)
    lines = [
        "| figure | " + " | ".join(config.label for config in configs) + " |",
        "|---|" + "---|" * len(configs),
    ]
    for title, cell in rows(options):
        values = []
        for config in configs:
            result = results[config]
            values.append("error" if "error" in result else cell(result))
        lines.append(f"| {title} | " + " | ".join(values) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------- main


def notes(result: dict[str, Any]) -> list[str]:
    """What makes a configuration's figures worth a second look."""
    found = []
    calibrations = [
        value
        for burst in ("sequential", "telegram_burst", "http_burst")
        for value in figure(result, burst, "calibration_ms_before_after") or []
    ]
    if calibrations and max(calibrations) > 1.3 * min(calibrations):
        found.append(
            "the machine's speed changed meanwhile (a fixed loop took "
            f"{min(calibrations):.0f} to {max(calibrations):.0f} ms): run it again"
        )
    foreign = figure(result, "other_processes_cpu_s")
    if foreign is not None and foreign > 2:
        found.append(f"other processes used {foreign:.0f} s of CPU meanwhile: the figures suffer")
    errors = figure(result, "product", "errors")
    if errors:
        found.append(f"the product logged {errors} error line(s)")
    for burst in ("telegram_burst", "http_burst"):
        if figure(result, burst, "listen_queue_overflows"):
            found.append(f"{burst}: the kernel dropped connections (listen queue full); latencies include it")
    plan = figure(result, "configuration", "plan")
    for phase, counts in (result.get("outcomes") or {}).items():
        if isinstance(counts, dict):
            strays = {key: number for key, number in counts.items() if key != f"{plan}/done"}
            if strays:
                found.append(f"{phase}: not all generations were done on Plan {plan}: {strays}")
    return found


def describe_tree(folder: Path) -> dict[str, Any]:
    """The commit measured and whether the tree had changes not committed (when it is a git tree)."""
    import subprocess

    described: dict[str, Any] = {"folder": str(folder)}
    git = shutil.which("git")
    if git is None:
        return described

    def run_git(*arguments: str) -> str:
        # Fixed arguments, no shell: nothing untrusted reaches the command line.
        command = [git, "-C", str(folder), *arguments]
        return subprocess.run(command, capture_output=True, text=True, check=True, timeout=10).stdout.strip()  # noqa: S603

    try:
        changed = [line for line in run_git("status", "--porcelain").splitlines() if line.strip()]
        described.update(commit=run_git("rev-parse", "HEAD"), uncommitted_changes=len(changed))
    except (OSError, subprocess.SubprocessError):
        pass
    return described


def parse_arguments(argv: Sequence[str] | None = None) -> tuple[argparse.Namespace, Options]:
    parser = argparse.ArgumentParser(
        prog="python -m bench.hot_path",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--plans", default="B,A", help="comma-separated: A, B (default B,A)")
    parser.add_argument("--databases", default="sqlite,postgres", help="comma-separated: sqlite, postgres")
    parser.add_argument("--sequential", type=int, default=100, help="requests one at a time (default 100)")
    parser.add_argument("--warmup", type=int, default=5, help="unmeasured generations first (default 5)")
    parser.add_argument(
        "--burst", type=int, default=400, help="/image updates at once (default 400; 0: none)"
    )
    parser.add_argument(
        "--http-burst", type=int, default=400, help="HTTP API requests at once (default 400; 0: none)"
    )
    parser.add_argument(
        "--telegram-connections",
        type=int,
        default=TELEGRAM_WEBHOOK_CONNECTIONS,
        help="webhook connections the burst of updates uses (Telegram's default: 40)",
    )
    parser.add_argument(
        "--http-connections", type=int, default=0, help="for the HTTP burst (default 0: one each)"
    )
    parser.add_argument(
        "--probe-ms",
        type=float,
        default=100.0,
        help="during the webhook burst, one HTTP request every this many ms, its 202 timed (0: none)",
    )
    parser.add_argument("--arq-jobs", type=int, default=3000, help="no-op jobs for bare arq (default 3000)")
    parser.add_argument(
        "--pg-stats-wait",
        type=float,
        default=11.0,
        help="seconds of idleness before reading PostgreSQL's commit count (0: do not read it)",
    )
    parser.add_argument(
        "--separate-worker", action="store_true", help="Plan A: an `aibot worker` process too"
    )
    parser.add_argument(
        "--polls", type=int, default=0, help="provider polls answering 'processing' (default 0)"
    )
    parser.add_argument("--quiet-ms", type=float, default=50.0, help="quiet after each sequential generation")
    parser.add_argument(
        "--jitter-ms", type=float, default=50.0, help="then a random pause up to this long (default 50)"
    )
    parser.add_argument("--log-level", default="INFO", help="the product's LOG_LEVEL (default INFO)")
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/13", help="flushed; for Plan A")
    parser.add_argument(
        "--env", action="append", default=[], metavar="NAME=VALUE", help="another product setting"
    )
    parser.add_argument(
        "--timeout", type=float, default=1200.0, help="stop everything after this many seconds"
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run: small sizes, no PostgreSQL pauses")
    parser.add_argument("--json", type=Path, help="write every figure there")
    parser.add_argument("--keep-logs", type=Path, help="keep each configuration's logs and database there")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="run the product under cProfile (needs --keep-logs: stats go there)",
    )
    parser.add_argument(
        "--product-dir",
        type=Path,
        default=ROOT,
        help="the tree whose `aibot` is measured (default: this one), e.g. an export of another commit",
    )
    arguments = parser.parse_args(argv)
    if arguments.quick:
        arguments.sequential, arguments.warmup = 20, 2
        arguments.burst, arguments.http_burst = 50, 50
        arguments.arq_jobs, arguments.pg_stats_wait = 500, 0.0
    if arguments.profile and not arguments.keep_logs:
        parser.error("--profile needs --keep-logs (where the statistics are kept)")
    extra_env = {}
    for item in arguments.env:
        name, separator, value = item.partition("=")
        if not separator:
            parser.error(f"--env wants NAME=VALUE, not {item!r}")
        extra_env[name.upper()] = value
    options = Options(
        sequential=arguments.sequential,
        warmup=arguments.warmup,
        burst=arguments.burst,
        http_burst=arguments.http_burst,
        telegram_connections=arguments.telegram_connections,
        http_connections=arguments.http_connections,
        probe_ms=arguments.probe_ms,
        quiet_ms=arguments.quiet_ms,
        jitter_ms=arguments.jitter_ms,
        arq_jobs=arguments.arq_jobs,
        pg_stats_wait=arguments.pg_stats_wait,
        separate_worker=arguments.separate_worker,
        polls=arguments.polls,
        log_level=arguments.log_level,
        postgres=arguments.postgres,
        redis_url=arguments.redis_url,
        extra_env=extra_env,
        keep_logs=arguments.keep_logs,
        product_dir=arguments.product_dir.resolve(),
        profile=arguments.profile,
    )
    return arguments, options


def configurations(arguments: argparse.Namespace) -> list[Config]:
    plans = [plan.strip().upper() for plan in arguments.plans.split(",") if plan.strip()]
    databases = [database.strip().lower() for database in arguments.databases.split(",") if database.strip()]
    for plan in plans:
        if plan not in PLANS:
            raise SystemExit(f"unknown plan {plan!r}: A or B")
    for database in databases:
        if database not in DATABASES:
            raise SystemExit(f"unknown database {database!r}: sqlite or postgres")
    # Columns as in issue 8: SQLite B, SQLite A, PostgreSQL B, PostgreSQL A.
    return [
        Config(database, plan)
        for database in DATABASES
        if database in databases
        for plan in PLANS
        if plan in plans
    ]


async def run(argv: Sequence[str] | None = None) -> int:
    arguments, options = parse_arguments(argv)
    configs = configurations(arguments)
    children = Children()
    results: dict[Config, dict[str, Any]] = {}
    began = time.monotonic()
    current = asyncio.current_task()
    loop = asyncio.get_running_loop()
    if current is not None:
        loop.add_signal_handler(signal.SIGTERM, current.cancel)
    try:
        async with asyncio.timeout(arguments.timeout):
            for config in configs:
                print(f"… {config.label}", file=sys.stderr, flush=True)
                try:
                    results[config] = await run_configuration(config, options, children)
                except (BenchError, OSError, aiohttp.ClientError, TimeoutError) as error:
                    traceback.print_exc(file=sys.stderr)
                    results[config] = {"label": config.label, "error": f"{type(error).__name__}: {error}"}
                for note in notes(results[config]):
                    print(f"  note: {note}", file=sys.stderr)
                print(f"  done in {time.monotonic() - began:.0f}s", file=sys.stderr, flush=True)
    finally:
        await children.close()
    command = " ".join(
        ["uv run --locked python -m bench.hot_path", *(sys.argv[1:] if argv is None else argv)]
    )
    print(markdown_table(results, options))
    failed = [results[config]["error"] for config in configs if "error" in results[config]]
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
        arguments.json.write_text(json.dumps(document, indent=2) + "\n")
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> None:
    try:
        code = asyncio.run(run(argv))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("interrupted: every process it started is stopped", file=sys.stderr)
        code = 130
    raise SystemExit(code)


if __name__ == "__main__":
    main()
