"""The `aibot` console script: run, worker, migrate (SPEC §2.1)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Awaitable, Callable

from loguru import logger

from settings import SettingsError, get_settings


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
    else:
        from app import App, StandaloneWorker

        process = App(settings) if arguments.command == "run" else StandaloneWorker(settings)
        _run_until_signal(process.run)


def _run_until_signal(start: Callable[[], Awaitable[None]]) -> None:
    async def runner() -> None:
        task = asyncio.ensure_future(start())
        loop = asyncio.get_running_loop()
        for received in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(received, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await _stop_leftover_tasks()
        logger.info("stopped")

    asyncio.run(runner())


async def _stop_leftover_tasks(grace: float = 10.0) -> None:
    """Cancel what is still running (e.g. a job whose worker was replaced) and wait a bounded time:
    a process told to stop must stop. What does not end in time is named in the log."""
    others = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
    for task in others:
        task.cancel()
    if not others:
        return
    _, pending = await asyncio.wait(others, timeout=grace)
    for task in pending:
        logger.warning("left running at exit: {} {}", task.get_name(), task.get_stack(limit=3))


if __name__ == "__main__":
    main()
