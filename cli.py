"""The `aibot` console script: run, worker, migrate (SPEC §2.1)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Awaitable, Callable

from loguru import logger

from settings import Settings, SettingsError, get_settings


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="aibot", description="AI generation bots: Telegram, HTTP API, workers"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("run", help="the whole monolith: bots, HTTP server, embedded worker")
    commands.add_parser("worker", help="an arq worker alone (Plan A), for scaling out")
    commands.add_parser("migrate", help="apply database migrations (alembic upgrade head)")
    arguments = parser.parse_args(argv)

    try:
        settings = get_settings()
    except SettingsError as error:
        print(f"aibot: {error}", file=sys.stderr)
        raise SystemExit(2) from None

    from logs import configure_logging

    configure_logging(settings)
    if arguments.command == "migrate":
        from migrations.runner import upgrade

        upgrade(settings.database_url)
        logger.info("database is at the latest migration")
    elif arguments.command == "run":
        from server import run_forever

        _run_until_signal(lambda: run_forever(settings))
    else:
        _run_until_signal(lambda: run_worker(settings))


async def run_worker(settings: Settings) -> None:
    from jobs.worker import run_supervised

    await run_supervised(settings)


def _run_until_signal(start: Callable[[], Awaitable[None]]) -> None:
    async def runner() -> None:
        task = asyncio.ensure_future(start())
        loop = asyncio.get_running_loop()
        for received in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(received, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await task
        logger.info("stopped")

    asyncio.run(runner())


if __name__ == "__main__":
    main()
