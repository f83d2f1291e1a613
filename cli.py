"""The `aibot` console script: run, worker, migrate (SPEC §2.1)."""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import os
import signal
import sys
import threading
import time
from typing import TYPE_CHECKING, NoReturn

from loguru import logger

import heap
from settings import SettingsError, get_settings

if TYPE_CHECKING:
    from app import Process


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
        from bot.telegram.types_on_demand import defer_aiogram_type_builds

        defer_aiogram_type_builds()  # before aiogram's first import: a second and more off every start
        from app import App, StandaloneWorker

        heap.tune_collector()
        process = App(settings) if arguments.command == "run" else StandaloneWorker(settings)
        _run_until_signal(process)
        _exit_now()


def _run_until_signal(process: Process) -> None:
    """Run the process until SIGTERM or SIGINT. The first signal stops it gracefully (it drains for up
    to DRAIN_TIMEOUT seconds, then hands back what still runs and closes everything); a second cuts
    the drain short. Whatever happens, the process exits within STOP_MARGIN seconds of the drain."""
    watchdog = _ExitWatchdog()

    async def runner() -> None:
        loop = asyncio.get_running_loop()

        def on_signal() -> None:
            watchdog.arm(process.settings.drain_timeout + STOP_MARGIN)
            process.request_stop()

        async def freeze_once_started() -> None:
            await process.started.wait()
            heap.freeze_what_started()

        for received in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(received, on_signal)
        freezing = asyncio.create_task(freeze_once_started())
        try:
            with contextlib.suppress(asyncio.CancelledError):
                await process.run()
            freezing.cancel()
            await _stop_leftover_tasks()
        finally:
            # What follows (asyncio's own shutdown, the interpreter joining threads) is bounded too.
            watchdog.arm(STOP_MARGIN)
        logger.info("stopped")

    asyncio.run(runner())


# Seconds a stopping process may take beyond its drain: interrupted work ends and journals a paid call
# in progress, then every connection closes. Past it the process exits regardless.
STOP_MARGIN = 5.0


class _ExitWatchdog:
    """Ends the process when a stop takes too long: a close that hangs, a thread that never ends (a
    process told to stop must exit). A daemon thread, so it outlives a blocked event loop and never
    keeps the process alive itself."""

    def __init__(self) -> None:
        self._armed = False

    def arm(self, seconds: float) -> None:
        if self._armed:
            return
        self._armed = True
        threading.Thread(target=self._exit_after, args=(seconds,), name="exit-watchdog", daemon=True).start()

    @staticmethod
    def _exit_after(seconds: float) -> None:
        time.sleep(seconds)
        alive = [thread.name for thread in threading.enumerate() if not thread.daemon]
        logger.error(
            "still running {:.0f}s after being told to stop (threads: {}): exiting now", seconds, alive
        )
        os._exit(1)


def _exit_now() -> NoReturn:
    """Exit once the process has stopped, without the interpreter's teardown of every module, which
    takes seconds here and counts against an orchestrator's grace period: everything the process
    opened is closed by now, and the exit handlers (`atexit`) still run. A thread still running (a
    connection nobody closed) is named in the log rather than waited for forever."""
    deadline = time.monotonic() + 1.0
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
    alive = [t.name for t in threading.enumerate() if t is not threading.current_thread() and not t.daemon]
    if alive:
        logger.warning("threads left running at exit: {}", ", ".join(alive))
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


async def _stop_leftover_tasks(grace: float = 1.0) -> None:
    """Cancel what is still running (the process has stopped its own work; this is what libraries
    left) and wait a bounded time. What does not end in time is named in the log."""
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
