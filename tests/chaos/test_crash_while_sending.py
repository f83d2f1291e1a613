"""A real process killed (SIGKILL) while it uploads the result: the upload may still reach the chat, so
a /cancel from then on is refused and refunds nothing; the next process runs the delivery again, and
the user pays once. Plan A (an `aibot worker`, PostgreSQL) and Plan B (`aibot run`, SQLite)."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

import pytest

from tests.conftest import BOT_TOKEN, AppFactory, closed_port
from tests.e2e.helpers import Chat, all_settled, balance_and_ledger_sum
from tests.fakes.replicate import FakeReplicate
from tests.fakes.telegram import FakeTelegram
from tests.processes import Spawn, environment, logs_of, stop

pytestmark = pytest.mark.slow

TOO_LATE = "Too late to cancel: the result is already being sent."
# Short leases: a killed process's generation is taken over 1.5 s after it died.
TAKE_OVER = {
    "JOB_TIMEOUT": "3",
    "LONG_WAIT_POLL": "0.2",
    "RECONCILE_EVERY": "1",
    "RECONCILE_GRACE": "0.5",
    "LEASE_SECONDS": "1.5",
    "PROGRESS_EDIT_INTERVAL": "0.05",
}


async def test_plan_a_worker_killed_mid_upload(
    make_app: AppFactory,
    spawn: Spawn,
    telegram: FakeTelegram,
    replicate: FakeReplicate,
    postgres_url: str,
    redis_url: str,
) -> None:
    # In this process: the bot's front (it answers /cancel); the generation runs in the workers.
    app = await make_app(database_url=postgres_url, redis_url=redis_url, embedded_worker=False)
    env = environment(telegram, replicate, DATABASE_URL=postgres_url, REDIS_URL=redis_url, **TAKE_OVER)
    upload = telegram.hold("sendPhoto")
    chat = Chat(telegram)
    chat.send("/image killed mid upload")
    first = await spawn("worker", env)
    try:
        await asyncio.wait_for(upload.arrived.wait(), 60)
    except TimeoutError:
        raise AssertionError(logs_of(first)[-4000:]) from None
    first.send_signal(signal.SIGKILL)
    await first.wait()

    await chat.ask("/cancel", TOO_LATE)
    second = await spawn("worker", env)
    upload.release.set()  # the dead worker's upload arrives too: Telegram had it
    try:
        await chat.reply("Charged 1 ⭐. Balance: 9 ⭐", timeout=60)
    except AssertionError:
        raise AssertionError(logs_of(second)[-4000:]) from None
    [generation] = await all_settled(app, 1)
    assert (generation.plan, generation.status, generation.refunded) == ("A", "done", 0)
    # Sent again by the next worker: a crash cannot tell whether the first upload arrived.
    assert 1 <= len(chat.albums()) <= 2
    assert sum("Charged" in text for text in chat.texts()) == 1
    assert not any("Canceled" in text for text in chat.texts())
    assert replicate.create_count() == 1
    assert await balance_and_ledger_sum(app) == (9, 9)


async def test_plan_b_process_killed_mid_upload(
    make_app: AppFactory,
    spawn: Spawn,
    telegram: FakeTelegram,
    replicate: FakeReplicate,
    tmp_path: Path,
) -> None:
    database = f"sqlite+aiosqlite:///{tmp_path / 'plan-b.db'}"
    env = environment(
        telegram,
        replicate,
        BOT_TOKENS=json.dumps({"image_bot": BOT_TOKEN}),
        DATABASE_URL=database,
        REDIS_URL=f"redis://127.0.0.1:{closed_port()}/0",  # no Redis: Plan B, inline
        HTTP_PORT=str(closed_port()),
        **TAKE_OVER,
    )
    upload = telegram.hold("sendPhoto")
    chat = Chat(telegram)
    first = await spawn("run", env)
    await telegram.wait_polling(BOT_TOKEN, timeout=60)
    chat.send("/image killed mid upload")
    try:
        await asyncio.wait_for(upload.arrived.wait(), 60)
    except TimeoutError:
        raise AssertionError(logs_of(first)[-4000:]) from None
    first.send_signal(signal.SIGKILL)
    await first.wait()

    chat.send("/cancel")  # answered by the next process, which also resumes the generation
    env["HTTP_PORT"] = str(closed_port())
    second = await spawn("run", env)
    try:
        await chat.reply(TOO_LATE, timeout=60)
        upload.release.set()
        await chat.reply("Charged 1 ⭐. Balance: 9 ⭐", timeout=60)
    except AssertionError:
        raise AssertionError(logs_of(second)[-4000:]) from None
    await stop(second)

    # Read through an app of this test on the same database (it does not poll: no bot tokens).
    app = await make_app(database_url=database, bot_tokens={})
    [generation] = await all_settled(app, 1)
    assert (generation.plan, generation.status, generation.refunded) == ("B", "done", 0)
    assert 1 <= len(chat.albums()) <= 2
    assert sum("Charged" in text for text in chat.texts()) == 1
    assert not any("Canceled" in text for text in chat.texts())
    assert await balance_and_ledger_sum(app) == (9, 9)
