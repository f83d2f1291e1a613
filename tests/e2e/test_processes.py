"""The console script as an operator runs it: `aibot run` and `aibot worker` as real processes."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from app import App
from tests.conftest import (
    API_TOKEN,
    BOT_TOKEN,
    AppFactory,
    closed_port,
    wait_until,
)
from tests.e2e.helpers import Chat, all_settled, balance_and_ledger_sum, generations_of
from tests.fakes.replicate import FakeReplicate
from tests.fakes.tcp_proxy import TcpProxy
from tests.fakes.telegram import FakeTelegram
from tests.processes import Spawn, environment, logs_of, stop, wait_healthy

pytestmark = pytest.mark.slow


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
    try:
        await chat.reply("Charged 1 ⭐. Balance: 9 ⭐", timeout=30)
    except AssertionError:
        worker.kill()
        await worker.wait()
        raise AssertionError(logs_of(worker)[-3000:]) from None
    [generation] = await all_settled(app, 1)
    assert (generation.plan, generation.status, generation.attempts) == ("A", "done", 1)
    assert await balance_and_ledger_sum(app) == (9, 9)
    logs = await stop(worker)
    # The worker's own line for the run's end (its start, a first attempt's, and arq's lines as a job
    # starts and ends are DEBUG's only).
    assert "done: 1 unit(s) delivered" in logs and f"generation={generation.id}" in logs
    assert "running, attempt 1" not in logs


async def _count(app: App) -> bool:
    return len(await generations_of(app)) == 1


async def test_a_standalone_worker_outlives_a_redis_outage(
    make_app: AppFactory,
    spawn: Spawn,
    telegram: FakeTelegram,
    replicate: FakeReplicate,
    redis_proxy: TcpProxy,
    sqlite_url: str,
    redis_url: str,
) -> None:
    """arq's worker exits when its Redis connection is lost: `aibot worker` starts it again."""
    app = await make_app(redis_url=redis_url, embedded_worker=False)
    proxied = f"{redis_proxy.url}/{redis_url.rsplit('/', 1)[1]}"
    worker = await spawn(
        "worker", environment(telegram, replicate, DATABASE_URL=sqlite_url, REDIS_URL=proxied)
    )
    chat = Chat(telegram)
    chat.send("/image before")
    await chat.reply("Charged 1 ⭐", timeout=30)
    await redis_proxy.refuse()
    await asyncio.sleep(3)  # the worker sees its connection gone and keeps trying to come back
    await redis_proxy.restore()
    chat.send("/image after the outage")  # enqueued by the app (its own Redis connection is fine)
    await chat.reply("Charged 1 ⭐. Balance: 8 ⭐", timeout=60)
    assert worker.returncode is None  # the same process, still running
    generations = await all_settled(app, 2)
    assert [g.plan for g in generations] == ["A", "A"]
    assert "starting it again" in await stop(worker)
