"""A task cancelled in the middle of a write (a stopping process, /cancel) must not leave SQLite's
only write lock behind: the next write goes through at once, and the cut-off write is rolled back."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.util import await_

from generation.store import Database, RuntimeFlag
from migrations.runner import upgrade


async def test_a_write_cut_off_by_cancellation_releases_the_lock(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}"
    await asyncio.to_thread(upgrade, url)
    db = Database(url)
    statement_running = threading.Event()

    def slow() -> int:  # runs in the connection's thread, inside the write transaction
        statement_running.set()
        time.sleep(0.3)
        return 1

    @event.listens_for(db.engine.sync_engine, "connect")
    def add_slow_function(dbapi_connection: Any, _record: Any) -> None:
        await_(dbapi_connection.driver_connection.create_function("slow", 0, slow))

    async def write_slowly() -> None:
        async with db.transaction() as session:
            session.add(RuntimeFlag(key="half-done", value="x"))
            await session.flush()
            await session.execute(text("SELECT slow()"))

    writer = asyncio.create_task(write_slowly())
    await asyncio.to_thread(statement_running.wait, 5)
    writer.cancel()  # while the statement runs, the write lock held
    await asyncio.gather(writer, return_exceptions=True)
    try:
        # Cut off mid-statement, the connection used to keep the lock: this waited for the busy
        # timeout (30 s) and failed with "database is locked".
        async with asyncio.timeout(5), db.transaction() as session:
            session.add(RuntimeFlag(key="next", value="y"))
        async with db.sessions() as session:
            assert await session.get(RuntimeFlag, "half-done") is None  # rolled back, not half-kept
            assert await session.get(RuntimeFlag, "next") is not None
    finally:
        await db.close()
