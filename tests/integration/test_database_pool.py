"""The PostgreSQL pools: a connection that sat idle is checked before use, one in steady use is not;
the accept path has connections of its own."""

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy import literal, select
from sqlalchemy.dialects.postgresql.asyncpg import AsyncAdapt_asyncpg_connection

from generation import store
from generation.direct_statements import Prepared
from generation.store import Database

_ONE = Prepared(select(literal(1)))


@pytest.fixture
async def db(postgres_url: str) -> AsyncIterator[Database]:
    database = Database(postgres_url)
    yield database
    await database.close()


async def select_one(db: Database) -> int | None:
    async with db.sessions() as session:
        return await session.scalar(select(1))


async def terminate_other_backends(postgres_url: str) -> int:
    """What a server restart does to the pool's idle connections."""
    connection = await asyncpg.connect(postgres_url.replace("+asyncpg", ""))
    try:
        return int(
            await connection.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        )
    finally:
        await connection.close()


async def test_an_idle_connection_killed_by_the_server_is_replaced_before_use(
    db: Database, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert await select_one(db) == 1
    assert await terminate_other_backends(postgres_url) >= 1
    monkeypatch.setattr(store, "PING_IDLE_AFTER", 0.0)  # every pooled connection now counts as idle

    assert await select_one(db) == 1  # no error reaches the caller: the dead connection was replaced


async def test_only_a_connection_that_sat_idle_is_pinged(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    pings: list[object] = []
    real_ping = AsyncAdapt_asyncpg_connection.ping

    def counted_ping(connection: AsyncAdapt_asyncpg_connection) -> None:
        pings.append(connection)
        real_ping(connection)

    monkeypatch.setattr(AsyncAdapt_asyncpg_connection, "ping", counted_ping)
    for _ in range(5):
        assert await select_one(db) == 1
    assert pings == []  # in steady use: no extra round trip per checkout

    monkeypatch.setattr(store, "PING_IDLE_AFTER", 0.0)
    assert await select_one(db) == 1
    assert len(pings) == 1


async def test_the_pool_keeps_the_connections_a_peak_opened(postgres_url: str) -> None:
    """DATABASE_POOL_SIZE connections stay open after a peak that used them all: the next peak opens
    none (a new connection prepares every statement again)."""
    database = Database(postgres_url, pool_size=4)
    try:
        held = [await database.read_engine.connect() for _ in range(6)]  # 4 and 2 beyond
        for connection in held:
            await connection.execute(select(1))
        for connection in held:
            await connection.close()
        pool = database.engine.pool
        assert pool.checkedin() == 4  # type: ignore[attr-defined]
        again = [await database.read_engine.connect() for _ in range(4)]
        assert pool.checkedin() == 0 and pool.overflow() == 0  # type: ignore[attr-defined]
        for connection in again:
            await connection.close()
    finally:
        await database.close()


async def test_the_accept_path_never_waits_for_the_generations_connections(postgres_url: str) -> None:
    """With every connection of the generations' pool taken, the accept path's reads, its record in
    one statement and its transaction still run at once, on connections of their own; a run's
    statement waits for a connection of its pool to come back."""
    database = Database(postgres_url, pool_size=1)
    database.quiet = lambda: True  # a quiet process changes nothing here (SQLite's loop writes only)
    try:
        held = [await database.engine.connect() for _ in range(1 + store.POOL_OVERFLOW)]
        for connection in held:
            await connection.execute(select(1))
        async with asyncio.timeout(5):  # not the pool's 30 s wait for a connection
            async with database.direct_reads(urgent=True) as direct:
                assert (await direct.execute(_ONE)).scalar() == 1
            async with database.direct_writes(urgent=True) as direct:
                assert (await direct.execute(_ONE)).scalar() == 1
            async with database.transaction(urgent=True) as session:
                assert await session.scalar(select(1)) == 1

        async def a_runs_read() -> int | None:
            async with database.direct_reads() as direct:
                return (await direct.execute(_ONE)).scalar()  # type: ignore[no-any-return]

        waiting = asyncio.ensure_future(a_runs_read())
        await asyncio.sleep(0.2)
        assert not waiting.done()  # no connection of its pool is free
        await held[0].close()
        assert await asyncio.wait_for(waiting, timeout=5) == 1
        assert database.intake_engine is not None
        intake_pool = database.intake_engine.pool
        assert intake_pool.size() == store.INTAKE_POOL_SIZE  # type: ignore[attr-defined]
        assert intake_pool._max_overflow == 0  # type: ignore[attr-defined]
        for connection in held[1:]:
            await connection.close()
    finally:
        await database.close()


async def test_sqlite_has_no_pool_of_the_accept_paths_own(tmp_path: Path) -> None:
    database = Database(f"sqlite+aiosqlite:///{tmp_path / 'one.db'}")
    try:
        assert database.intake_engine is None
        assert database.engines() == [database.engine, database.read_engine]
        async with database.direct_reads(urgent=True) as direct:
            assert (await direct.execute(_ONE)).scalar() == 1
    finally:
        await database.close()
