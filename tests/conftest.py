"""Shared fixtures: the fake Telegram, Replicate and ElevenLabs servers, real Redis and PostgreSQL
(each test gets its own Redis database flush and its own PostgreSQL database), and the whole app
started in-process against them."""

from __future__ import annotations

import asyncio
import os
import random
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis

from app import App
from settings import Settings, load_settings
from tests.fakes.elevenlabs import FakeElevenLabs
from tests.fakes.replicate import FakeReplicate
from tests.fakes.tcp_proxy import TcpProxy
from tests.fakes.telegram import FakeTelegram
from tests.processes import Spawn, start_process

IN_CI = os.environ.get("CI", "").lower() == "true"
POSTGRES_ADMIN_DSN = os.environ.get("TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")


def _redis_test_url() -> str:
    """TEST_REDIS_URL (database 7 by default), one database further for each parallel pytest worker
    (gw0, gw1, ...): every test flushes its worker's database, never another worker's."""
    base = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/7")
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    server, index = base.rsplit("/", 1)
    return f"{server}/{int(index) + int(worker.removeprefix('gw'))}"


REDIS_TEST_URL = _redis_test_url()

from tests.constants import ADMIN_ID as ADMIN_ID  # noqa: E402 - re-exported for the tests
from tests.constants import API_TOKEN as API_TOKEN  # noqa: E402
from tests.constants import BOT_TOKEN as BOT_TOKEN  # noqa: E402
from tests.constants import OTHER_BOT_TOKEN as OTHER_BOT_TOKEN  # noqa: E402


def _unavailable(what: str) -> None:
    if IN_CI:
        pytest.fail(f"{what} is not available, and CI=true requires it")
    pytest.skip(f"{what} is not available")


def _port_open(host: str, port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex((host, port)) == 0


def _ports_never_handed_out() -> range:
    """Ports below the kernel's range for port-0 binds: none of them is given to a server that another
    test, or another pytest worker, starts on port 0 meanwhile (a port taken from that range and freed
    could be: a spawned `aibot run` then found a fake's server on its port, answering 404)."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768  # Linux's default
    return range(max(1024, low - 12000), low)


_CHOSEN_PORTS = _ports_never_handed_out()


def closed_port() -> int:
    """A loopback port nobody listens on (for 'Redis is down', or for a spawned process to listen on),
    picked at random among ports the kernel never hands out by itself."""
    while True:
        port = random.choice(_CHOSEN_PORTS)
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue  # in use
        return port


@pytest.fixture
async def redis_url() -> AsyncIterator[str]:
    client = aioredis.from_url(REDIS_TEST_URL)
    try:
        await client.flushdb()
    except Exception:
        await client.aclose()
        _unavailable("Redis at " + REDIS_TEST_URL)
    yield REDIS_TEST_URL
    await client.flushdb()
    await client.aclose()


def _run_in_own_loop(coroutine: Awaitable[Any]) -> Any:
    """Run a coroutine to completion on a fresh loop in a thread (for sync fixtures)."""

    async def wrapper() -> Any:
        return await coroutine

    with ThreadPoolExecutor(max_workers=1) as executor:
        return executor.submit(asyncio.run, wrapper()).result()


async def _create_database(name: str) -> None:
    admin = await asyncpg.connect(POSTGRES_ADMIN_DSN, timeout=5)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()


async def _drop_database(name: str) -> None:
    admin = await asyncpg.connect(POSTGRES_ADMIN_DSN, timeout=5)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A new, empty PostgreSQL database for this test, dropped after it."""
    name = f"aibot_test_{uuid.uuid4().hex[:12]}"
    try:
        _run_in_own_loop(_create_database(name))
    except (OSError, asyncpg.PostgresError, TimeoutError) as error:
        _unavailable(f"PostgreSQL at {POSTGRES_ADMIN_DSN} ({error})")
    host_part = POSTGRES_ADMIN_DSN.split("://", 1)[1].rsplit("/", 1)[0]
    yield f"postgresql+asyncpg://{host_part}/{name}"
    _run_in_own_loop(_drop_database(name))


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'aibot.db'}"


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest) -> str:
    """Both databases: a test taking this runs once on SQLite and once on PostgreSQL."""
    return str(request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "postgres_url"))


@pytest.fixture
async def telegram() -> AsyncIterator[FakeTelegram]:
    fake = FakeTelegram()
    await fake.start()
    fake.add_bot(BOT_TOKEN, "image_bot")
    fake.add_bot(OTHER_BOT_TOKEN, "other_bot")
    yield fake
    await fake.stop()


@pytest.fixture
async def replicate() -> AsyncIterator[FakeReplicate]:
    fake = FakeReplicate()
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
async def elevenlabs() -> AsyncIterator[FakeElevenLabs]:
    fake = FakeElevenLabs()
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
async def redis_proxy() -> AsyncIterator[TcpProxy]:
    if not _port_open("127.0.0.1", 6379):
        _unavailable("Redis at 127.0.0.1:6379")
    proxy = TcpProxy("127.0.0.1", 6379)
    await proxy.start()
    yield proxy
    await proxy.stop()


def make_settings(
    database_url: str,
    telegram: FakeTelegram,
    replicate: FakeReplicate,
    elevenlabs: FakeElevenLabs | None = None,
    **overrides: Any,
) -> Settings:
    values: dict[str, Any] = {
        "bot_tokens": {"image_bot": BOT_TOKEN, "other_bot": OTHER_BOT_TOKEN},
        "telegram_api_url": telegram.url,
        "admin_ids": [ADMIN_ID],
        "database_url": database_url,
        "redis_url": f"redis://127.0.0.1:{closed_port()}/0",
        "replicate_api_token": replicate.token,
        "replicate_base_url": replicate.url,
        "replicate_poll_interval": 0.02,
        "replicate_webhook_secret": replicate.webhook_secret,
        "http_port": 0,
        "api_token": API_TOKEN,
        "new_user_bonus": 10,
        "redis_timeout": 1.0,
        "worker_poll_delay": 0.02,
        # A test that stops an app with work still held at the fakes need not wait DRAIN_TIMEOUT's 25 s.
        "drain_timeout": 2.0,
        # The files tests point zip_url and audio_url at are served on loopback.
        "fetch_allow_private": True,
    }
    if elevenlabs is not None:
        values["elevenlabs_api_key"] = elevenlabs.api_key
        values["elevenlabs_base_url"] = elevenlabs.url
    values.update(overrides)
    return load_settings(_env_file=None, **values)


AppFactory = Callable[..., Awaitable[App]]


@pytest.fixture
async def make_app(
    telegram: FakeTelegram, replicate: FakeReplicate, elevenlabs: FakeElevenLabs, sqlite_url: str
) -> AsyncIterator[AppFactory]:
    """Start the whole app in-process; keyword arguments override settings. Stopped after the test."""
    apps: list[App] = []

    async def factory(**overrides: Any) -> App:
        overrides.setdefault("database_url", sqlite_url)
        settings = make_settings(telegram=telegram, replicate=replicate, elevenlabs=elevenlabs, **overrides)
        app = App(settings)
        await app.start()
        apps.append(app)
        return app

    yield factory
    for app in reversed(apps):
        await app.stop()


async def wait_until(predicate: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    """For states only the database shows (no event to await): check, yield, check again, bounded."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


@pytest.fixture
async def spawn(tmp_path: Path) -> AsyncIterator[Spawn]:
    """Start `aibot <command>` processes; any still running after the test is killed."""
    processes: list[asyncio.subprocess.Process] = []

    async def start(command: str, env: dict[str, str]) -> asyncio.subprocess.Process:
        process = await start_process(command, env, tmp_path)
        processes.append(process)
        return process

    yield start
    for process in processes:
        if process.returncode is None:
            process.kill()
            await process.wait()
