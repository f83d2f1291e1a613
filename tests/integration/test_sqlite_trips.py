"""On SQLite a statement is one trip to its connection's thread (generation/sqlite_connections.py
_OneTripCursor): aiosqlite's cursor made four, each a thread hand-off and an event-loop wake-up; a
transaction's BEGIN goes with its first statement; a single statement (`one_statement`) commits by
itself; and a connection with no transaction open goes back to the pool without a ROLLBACK."""

from __future__ import annotations

import asyncio
import gc
import threading
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import func, insert, select, text, update
from sqlalchemy.exc import IntegrityError

from generation.store import Database, RuntimeFlag
from migrations.runner import upgrade
from tests.conftest import wait_until
from tests.integration.conftest import Trips


async def test_a_statement_and_its_rows_are_one_trip(
    tmp_path: Path, count_sqlite_trips: Callable[[], Trips]
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}"
    await asyncio.to_thread(upgrade, url)
    db = Database(url)
    try:
        async with db.transaction() as session:  # connections open, pragmas set: not counted
            session.add(RuntimeFlag(key="warm", value="0"))
        async with db.reads() as connection:
            await connection.execute(text("SELECT 1"))
        trips = count_sqlite_trips()

        async with db.reads() as connection:
            rows = (await connection.execute(text("SELECT 1 UNION ALL SELECT 2"))).all()
        assert [row[0] for row in rows] == [1, 2]
        assert trips.count == 1

        trips.count = 0
        async with db.transaction() as session:
            changed = await session.execute(
                update(RuntimeFlag)
                .where(RuntimeFlag.key == "warm")
                .values(value="1")
                .returning(RuntimeFlag.value)
            )
            assert changed.scalar_one() == "1"
            session.add_all([RuntimeFlag(key="a", value="x"), RuntimeFlag(key="b", value="y")])
        assert trips.count == 3  # BEGIN IMMEDIATE with the UPDATE and its row, the INSERT of both, COMMIT
        # (and no ROLLBACK as the pool takes either connection back: neither has a transaction open)

        trips.count = 0
        async with db.one_statement() as connection:
            await connection.execute(update(RuntimeFlag).where(RuntimeFlag.key == "a").values(value="x2"))
            # Committed by itself already: another connection reads it before this one is given back.
            async with db.reads() as reader:
                read = await reader.scalar(select(RuntimeFlag.value).where(RuntimeFlag.key == "a"))
            assert read == "x2"
        assert trips.count == 2  # the UPDATE alone (no BEGIN, no COMMIT), and the read

        trips.count = 0
        async with db.transaction():  # a transaction that ran nothing costs nothing
            pass
        assert trips.count == 0

        with pytest.raises(RuntimeError):
            async with db.transaction() as session:  # a transaction open when it fails: rolled back
                session.add(RuntimeFlag(key="c", value="z"))
                await session.flush()
                raise RuntimeError("fails halfway")

        with pytest.raises(IntegrityError):
            async with db.transaction() as session:  # its first statement (with the BEGIN) fails
                await session.execute(insert(RuntimeFlag).values(key="a", value="taken"))
        # Neither left the write lock held: the next writer writes at once.
        async with db.transaction() as session:
            await session.execute(update(RuntimeFlag).where(RuntimeFlag.key == "a").values(value="x"))

        async with db.sessions() as session:
            assert await session.scalar(select(func.count()).select_from(RuntimeFlag)) == 3
            assert await session.scalar(select(RuntimeFlag.value).where(RuntimeFlag.key == "warm")) == "1"
            assert await session.scalar(select(RuntimeFlag.value).where(RuntimeFlag.key == "b")) == "y"
    finally:
        await db.close()


async def test_a_database_dropped_unclosed_still_ends_its_connections_threads(tmp_path: Path) -> None:
    """aiosqlite ends a connection's thread (not a daemon) when the connection is collected; nothing
    of ours may keep it from being collected, or the process could never exit (a test reading through
    an app it stopped, as test_resilience does, hung pytest at its exit)."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}"
    await asyncio.to_thread(upgrade, url)
    before = threading.active_count()
    db = Database(url)
    async with db.transaction() as session:
        session.add(RuntimeFlag(key="a", value="x"))
    async with db.reads() as connection:
        await connection.execute(text("SELECT 1"))
    assert threading.active_count() > before
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)  # aiosqlite's "deleted before being closed"
        del db, session, connection
        gc.collect()

    async def threads_ended() -> bool:
        return threading.active_count() <= before

    await wait_until(threads_ended, timeout=5)
