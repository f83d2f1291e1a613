"""The console script as an operator runs it: `aibot run` and `aibot worker` as real processes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest

from server import App
from tests.conftest import (
    ADMIN_ID,
    API_TOKEN,
    BOT_TOKEN,
    OTHER_BOT_TOKEN,
    AppFactory,
    closed_port,
    wait_until,
)
from tests.e2e.helpers import Chat, all_settled, balance_and_ledger_sum, generations_of
from tests.fakes.replicate import FakeReplicate
from tests.fakes.telegram import FakeTelegram

pytestmark = pytest.mark.slow

AIBOT = str(Path(sys.executable).with_name("aibot"))


def environment(telegram: FakeTelegram, replicate: FakeReplicate, **extra: str) -> dict[str, str]:
    env = {
        key: value for key, value in os.environ.items() if not key.startswith(("BOT_", "REDIS_", "DATABASE_"))
    }
    env.update(
        {
            "BOT_TOKENS": json.dumps({"image_bot": BOT_TOKEN, "other_bot": OTHER_BOT_TOKEN}),
            "TELEGRAM_API_URL": telegram.url,
            "ADMIN_IDS": json.dumps([ADMIN_ID]),
            "REPLICATE_API_TOKEN": replicate.token,
            "REPLICATE_BASE_URL": replicate.url,
            "REPLICATE_POLL_INTERVAL": "0.05",
            "API_TOKEN": API_TOKEN,
            "NEW_USER_BONUS": "10",
            "WORKER_POLL_DELAY": "0.05",
        }
    )
    env.update(extra)
    return env


Spawn = Callable[..., Awaitable[asyncio.subprocess.Process]]


@pytest.fixture
async def spawn(tmp_path: Path) -> AsyncIterator[Spawn]:
    processes: list[asyncio.subprocess.Process] = []

    async def start(command: str, env: dict[str, str]) -> asyncio.subprocess.Process:
        process = await asyncio.create_subprocess_exec(
            AIBOT,
            command,
            env=env,
            cwd=tmp_path,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        processes.append(process)
        return process

    yield start
    for process in processes:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def stop(process: asyncio.subprocess.Process) -> str:
    """SIGTERM, then the process must exit cleanly on its own; answers everything it logged."""
    process.send_signal(signal.SIGTERM)
    output, _ = await asyncio.wait_for(process.communicate(), timeout=30)
    assert process.returncode == 0, output.decode()
    return output.decode()


async def wait_healthy(port: int, process: asyncio.subprocess.Process) -> dict[str, object]:
    async with aiohttp.ClientSession() as http:
        for _ in range(600):  # the process imports aiogram and friends first: allow it time
            if process.returncode is not None:
                raise AssertionError("aibot exited before it served HTTP")
            try:
                async with http.get(f"http://127.0.0.1:{port}/healthz") as response:
                    return dict(await response.json())
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.1)
    raise AssertionError("aibot did not serve /healthz in time")


async def test_aibot_run_serves_bots_and_http_on_sqlite_without_redis(
    spawn: Spawn, telegram: FakeTelegram, replicate: FakeReplicate, tmp_path: Path
) -> None:
    port = closed_port()
    env = environment(
        telegram, replicate, HTTP_PORT=str(port), REDIS_URL=f"redis://127.0.0.1:{closed_port()}/0"
    )
    process = await spawn("run", env)
    health = await wait_healthy(port, process)
    assert health["plan"] == "B" and health["database"] is True and health["redis"] is None
    chat = Chat(telegram)
    await telegram.wait_polling(chat.token, timeout=30)
    chat.send("/image a process test")
    await chat.reply("Charged 1 ⭐. Balance: 9 ⭐", timeout=30)
    logs = await stop(process)
    assert "Redis is not reachable" in logs
    assert (tmp_path / "aibot.db").exists()  # the embedded default: a SQLite file in the working folder
    secret_half = BOT_TOKEN.split(":")[1]
    assert secret_half not in logs and replicate.token not in logs and API_TOKEN not in logs


async def test_aibot_worker_runs_plan_a_jobs_alone(
    make_app: AppFactory,
    spawn: Spawn,
    telegram: FakeTelegram,
    replicate: FakeReplicate,
    postgres_url: str,
    redis_url: str,
) -> None:
    app = await make_app(database_url=postgres_url, redis_url=redis_url, embedded_worker=False)
    chat = Chat(telegram)
    chat.send("/image waiting for a worker")
    # Recorded and enqueued, but nothing in this process runs it.
    await wait_until(lambda: _count(app), timeout=15)
    [queued] = await generations_of(app)
    assert (queued.plan, queued.status, replicate.create_count()) == ("A", "queued", 0)
    worker = await spawn(
        "worker", environment(telegram, replicate, DATABASE_URL=postgres_url, REDIS_URL=redis_url)
    )
    await chat.reply("Charged 1 ⭐. Balance: 9 ⭐", timeout=30)
    [generation] = await all_settled(app, 1)
    assert (generation.plan, generation.status, generation.attempts) == ("A", "done", 1)
    assert await balance_and_ledger_sum(app) == (9, 9)
    logs = await stop(worker)
    assert "run_generation" in logs


async def _count(app: App) -> bool:
    return len(await generations_of(app)) == 1
