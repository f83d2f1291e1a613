"""Running `aibot` commands as real processes in tests (the console script an operator runs)."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp

from tests.constants import ADMIN_ID, API_TOKEN, BOT_TOKEN, OTHER_BOT_TOKEN
from tests.fakes.replicate import FakeReplicate
from tests.fakes.telegram import FakeTelegram

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
HEALTH_AUTH = {"Authorization": f"Bearer {API_TOKEN}"}


# Where each started process logs: a file, not a pipe (a pipe nobody reads fills up and then blocks
# the process on its next log line).
LOG_FILES: dict[int, Path] = {}
# Numbers the log files: taken before the process starts, so processes started together (asyncio.gather)
# each get a file of their own (counting LOG_FILES would give them the same one).
_LOG_NUMBERS = itertools.count()


async def start_process(command: str, env: dict[str, str], cwd: Path) -> asyncio.subprocess.Process:
    log_file = cwd / f"{command}-{next(_LOG_NUMBERS)}.log"
    with log_file.open("wb") as output:
        process = await asyncio.create_subprocess_exec(
            AIBOT, command, env=env, cwd=cwd, stdout=output, stderr=asyncio.subprocess.STDOUT
        )
    LOG_FILES[process.pid] = log_file
    return process


def logs_of(process: asyncio.subprocess.Process) -> str:
    return LOG_FILES[process.pid].read_text(errors="replace")


async def stop(process: asyncio.subprocess.Process) -> str:
    """SIGTERM, then the process must exit cleanly on its own; answers everything it logged."""
    process.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(process.wait(), timeout=30)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise AssertionError("did not stop within 30 s of SIGTERM:\n" + logs_of(process)[-4000:]) from None
    assert process.returncode == 0, logs_of(process)[-4000:]
    return logs_of(process)


async def wait_healthy(
    port: int, process: asyncio.subprocess.Process, timeout: float = 60.0
) -> dict[str, object]:
    async with aiohttp.ClientSession() as http:
        for _ in range(int(timeout * 10)):  # the process imports aiogram and friends first: allow it time
            if process.returncode is not None:
                raise AssertionError("aibot exited before it served HTTP")
            try:
                # With the API token: the health details (plan, database, Redis) are not public.
                async with http.get(f"http://127.0.0.1:{port}/healthz", headers=HEALTH_AUTH) as response:
                    return dict(await response.json())
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.1)
    raise AssertionError("aibot did not serve /healthz in time")
