"""Closing a SQLite database ends every connection's thread, even one a task still held: aiosqlite's
threads are not daemons, and one left running keeps the process from exiting."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from sqlalchemy import select

from generation.store import Database


def connection_threads() -> set[threading.Thread]:
    return {
        thread
        for thread in threading.enumerate()
        if "_connection_worker_thread" in thread.name and thread.is_alive()
    }


async def all_ended(threads: set[threading.Thread], timeout: float = 5.0) -> bool:
    """Whether the threads end in time (each ends as soon as its connection is closed)."""

    def join_all() -> None:
        for thread in threads:
            thread.join(timeout)

    await asyncio.to_thread(join_all)
    return not any(thread.is_alive() for thread in threads)


async def test_closing_ends_the_thread_of_a_connection_a_task_still_holds(tmp_path: Path) -> None:
    before = connection_threads()
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'held.db'}")
    async with db.transaction() as writing:  # a write connection and a read one, both checked out
        await writing.execute(select(1))
        async with db.sessions() as reading:
            await reading.execute(select(1))
            opened = connection_threads() - before
            assert len(opened) == 2
            await db.close()  # as a stopping process does while a stray task is mid-query
    assert await all_ended(opened)
    assert connection_threads() - before == set()


async def test_a_database_used_again_after_closing_closes_again(tmp_path: Path) -> None:
    """As SQLAlchemy's dispose allows: the next use opens new connections, the next close ends them."""
    before = connection_threads()
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'reused.db'}")
    assert await db.ping()
    await db.close()
    assert await db.ping()
    assert connection_threads() - before
    await db.close()
    assert await all_ended(connection_threads() - before)
