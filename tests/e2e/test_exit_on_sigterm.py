"""`aibot run` told to stop always exits, promptly, with its connections closed.

It used to hang now and then on SQLite after serving generations: it logged "stopped" and then waited
forever on aiosqlite connection threads (not daemons) that were never closed: a task still handling an
update used the database while it was being closed, and the connection it held went back to the
disposed pool, where nobody closes it. Several rounds, as the hang was intermittent; two processes
at a time (one on Plan A, one on Plan B, each with its own bot and database) to keep the test short.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path

import aiohttp
import pytest
from sqlalchemy import func, select

from generation.store import Database, Generation, GenerationStatus, LedgerEntry, User
from tests.conftest import API_TOKEN, BOT_TOKEN, OTHER_BOT_TOKEN, closed_port, wait_until
from tests.e2e.helpers import Chat
from tests.fakes.replicate import FakeReplicate
from tests.fakes.telegram import FakeTelegram
from tests.processes import Spawn, environment, logs_of, wait_healthy

pytestmark = pytest.mark.slow

ROUNDS = 3
# From SIGTERM to exit. The generations in flight finish in the drain (the fake provider answers at
# once); closing takes well under a second.
EXIT_WITHIN = 5.0


async def _post_generation(port: int, telegram_id: int, bot_name: str, key: str) -> None:
    headers = {"Authorization": f"Bearer {API_TOKEN}", "Idempotency-Key": key}
    body = {"telegram_id": telegram_id, "bot_name": bot_name, "prompt": "an exit test"}
    async with aiohttp.ClientSession() as http:
        url = f"http://127.0.0.1:{port}/api/generation/text-to-image"
        async with http.post(url, json=body, headers=headers) as response:
            assert response.status == 202, await response.text()


async def _start(
    spawn: Spawn,
    telegram: FakeTelegram,
    replicate: FakeReplicate,
    database: Path,
    redis_url: str,
    bot: tuple[str, str],
) -> tuple[asyncio.subprocess.Process, int]:
    """`aibot run` with one bot; answers the process and its HTTP port."""
    bot_name, token = bot
    port = closed_port()
    env = environment(
        telegram,
        replicate,
        BOT_TOKENS=json.dumps({bot_name: token}),
        HTTP_PORT=str(port),
        DATABASE_URL=f"sqlite+aiosqlite:///{database}",
        REDIS_URL=redis_url,
    )
    return await spawn("run", env), port


async def _serve_then_stop(
    process: asyncio.subprocess.Process,
    port: int,
    telegram: FakeTelegram,
    database: Path,
    bot: tuple[str, str],
    round_number: int,
) -> None:
    """A Telegram and an HTTP generation, SIGTERM (every other round while they still run), then the
    process must exit at once, cleanly, with nothing left running and nothing lost."""
    bot_name, token = bot
    await wait_healthy(port, process)
    user = 5000 + round_number
    chat = Chat(telegram, user_id=user, token=token)
    await telegram.wait_polling(token, timeout=30)
    chat.send(f"/image round {round_number}")
    await _post_generation(port, user, bot_name, f"exit-{bot_name}-{round_number}")
    in_flight = round_number % 2 == 1
    if in_flight:  # recorded (the first message to the chat comes after), maybe not delivered
        await chat.reply("", timeout=30)
    else:  # idle: everything so far delivered (an earlier round's queued job included)
        await chat.reply("Charged 1 ⭐", timeout=30)
        await wait_until(lambda: _all_final(database, bot_name), timeout=30)

    process.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    try:
        await asyncio.wait_for(process.wait(), timeout=EXIT_WITHIN)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise AssertionError(
            f"{bot_name}, round {round_number}: still running {EXIT_WITHIN} s after SIGTERM:\n"
            + logs_of(process)[-3000:]
        ) from None
    logs = logs_of(process)
    assert process.returncode == 0, logs[-3000:]
    assert time.monotonic() - signalled < EXIT_WITHIN
    assert "stopped" in logs
    assert "left running at exit" not in logs, logs[-3000:]  # threads (connections) or tasks

    generations, ledger = await _read(database, bot_name)
    assert len(generations) == 2 * (round_number + 1)
    # Nothing lost, nothing half done: what was running finished in the drain; a Plan A job not yet
    # started stays queued (the next start runs it); no lease is left held; each paid once.
    expected = {GenerationStatus.done, GenerationStatus.queued} if in_flight else {GenerationStatus.done}
    assert {status for status, _ in generations} <= expected
    assert all(lease_owner is None for _, lease_owner in generations)
    assert ledger and all(balance == total == 8 for balance, total in ledger)


async def _read(database: Path, bot_name: str) -> tuple[list[tuple[str, str | None]], list[tuple[int, int]]]:
    """The bot's generations (status, lease owner), and each of its users' balance and ledger sum."""
    db = Database(f"sqlite+aiosqlite:///{database}")
    try:
        async with db.sessions() as session:
            generations = await session.execute(
                select(Generation.status, Generation.lease_owner).where(Generation.bot_name == bot_name)
            )
            balances = await session.execute(
                select(User.balance, func.coalesce(func.sum(LedgerEntry.amount), 0))
                .join(LedgerEntry, LedgerEntry.user_id == User.id)
                .where(User.bot_name == bot_name)
                .group_by(User.id)
            )
            return [(status, owner) for status, owner in generations], [
                (int(balance), int(total)) for balance, total in balances
            ]
    finally:
        await db.close()


async def _all_final(database: Path, bot_name: str) -> bool:
    generations, _ = await _read(database, bot_name)
    return all(GenerationStatus(status).is_final for status, _ in generations)


async def test_aibot_run_on_sqlite_exits_promptly_on_sigterm_after_serving_generations(
    spawn: Spawn, telegram: FakeTelegram, replicate: FakeReplicate, redis_url: str, tmp_path: Path
) -> None:
    plan_a = (tmp_path / "a.db", redis_url, ("image_bot", BOT_TOKEN))
    plan_b = (tmp_path / "b.db", f"redis://127.0.0.1:{closed_port()}/0", ("other_bot", OTHER_BOT_TOKEN))
    for round_number in range(ROUNDS):
        # One after the other (each gets its own log file), then both at once.
        started = [await _start(spawn, telegram, replicate, *plan) for plan in (plan_a, plan_b)]
        await asyncio.gather(
            *(
                _serve_then_stop(process, port, telegram, database, bot, round_number)
                for (process, port), (database, _, bot) in zip(started, (plan_a, plan_b), strict=True)
            )
        )
