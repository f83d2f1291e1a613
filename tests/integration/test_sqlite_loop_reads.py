"""On a SQLite file the hot path's reads run in the event loop's thread (generation/direct_statements.py,
`SqliteLoopReads`): at once, with no hand-off to a connection's thread; they see every commit made
before them; one that cannot run at once goes the usual way and waits as every read does."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from sqlalchemy import bindparam, select, update

from generation.direct_statements import Prepared, SqliteLoopReads
from generation.store import Database, User
from migrations.runner import upgrade
from tests.integration.conftest import Trips

_BALANCE = Prepared(select(User.balance).where(User.id == bindparam("user_id")))
_ADD = Prepared(
    update(User).where(User.id == bindparam("user_id")).values(balance=User.balance + bindparam("stars"))
)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "aibot.db"


@pytest.fixture
async def db(path: Path) -> AsyncIterator[Database]:
    url = f"sqlite+aiosqlite:///{path}"
    await asyncio.to_thread(upgrade, url)
    database = Database(url)
    yield database
    await database.close()


async def _user(db: Database, balance: int) -> int:
    async with db.transaction() as session:
        telegram_id = uuid.uuid4().int % 10**9
        user = User(bot_name="image_bot", telegram_id=telegram_id, language="en", balance=balance)
        session.add(user)
        await session.flush()
        return user.id


async def test_a_read_runs_at_once_in_the_loops_thread(
    db: Database, count_sqlite_trips: Callable[[], Trips]
) -> None:
    user_id = await _user(db, 42)
    trips = count_sqlite_trips()
    turned: list[bool] = []
    asyncio.get_running_loop().call_soon(turned.append, True)
    async with db.direct_reads() as direct:
        assert isinstance(direct, SqliteLoopReads)
        balance = (await direct.execute(_BALANCE, {"user_id": user_id})).scalar()
        unknown = (await direct.execute(_BALANCE, {"user_id": -1})).rows
    assert (balance, unknown) == (42, [])
    assert turned == []  # the loop never turned: nothing was waited for
    assert trips.count == 0  # no connection's thread was asked


async def test_a_read_sees_every_commit_made_before_it(db: Database) -> None:
    user_id = await _user(db, 0)
    for stars in range(1, 6):
        async with db.direct_writes() as writes:
            await writes.execute(_ADD, {"user_id": user_id, "stars": stars})
        async with db.direct_reads() as reads:
            assert (await reads.execute(_BALANCE, {"user_id": user_id})).scalar() == sum(range(1, stars + 1))


async def test_a_read_that_cannot_run_at_once_waits_as_every_read_does(
    db: Database, path: Path, count_sqlite_trips: Callable[[], Trips]
) -> None:
    user_id = await _user(db, 7)
    # A database left in rollback-journal mode, another process holding its exclusive lock: no other
    # connection may read meanwhile, and the loop's connection waits for nothing.
    await db.close()
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("PRAGMA journal_mode=DELETE")
    holder.execute("BEGIN EXCLUSIVE")
    try:
        async with db.direct_reads() as direct:
            read = asyncio.create_task(direct.execute(_BALANCE, {"user_id": user_id}))
            await asyncio.sleep(0.3)
            assert not read.done()  # waiting in a connection's thread, not failed, not blocking the loop
            holder.execute("ROLLBACK")
            assert (await asyncio.wait_for(read, 10)).scalar() == 7
            # And the loop's own connection serves the next read again.
            trips = count_sqlite_trips()
            assert (await direct.execute(_BALANCE, {"user_id": user_id})).scalar() == 7
            assert trips.count == 0
    finally:
        holder.close()


async def test_the_loops_connection_writes_nothing(db: Database) -> None:
    user_id = await _user(db, 3)
    async with db.direct_reads() as direct:
        assert isinstance(direct, SqliteLoopReads)
        # Sent here by mistake, a write is not made on the read connection: it goes the usual way,
        # on a read connection that begins no transaction, and commits by itself.
        await direct.execute(_ADD, {"user_id": user_id, "stars": 1})
        assert (await direct.execute(_BALANCE, {"user_id": user_id})).scalar() == 4


async def test_closing_the_database_closes_the_loops_connection_and_a_later_read_opens_one(
    db: Database,
) -> None:
    user_id = await _user(db, 5)
    async with db.direct_reads() as direct:
        assert (await direct.execute(_BALANCE, {"user_id": user_id})).scalar() == 5
    await db.close()
    async with db.direct_reads() as direct:
        assert (await direct.execute(_BALANCE, {"user_id": user_id})).scalar() == 5


def test_an_in_memory_database_keeps_its_reads_on_the_engine() -> None:
    database = Database("sqlite+aiosqlite:///:memory:")
    assert not isinstance(database._direct_reads, SqliteLoopReads)
