"""The PostgreSQL pool: a connection that sat idle is checked before use, one in steady use is not."""

from collections.abc import AsyncIterator

import asyncpg
import pytest
from sqlalchemy import select
from sqlalchemy.dialects.postgresql.asyncpg import AsyncAdapt_asyncpg_connection

from generation import store
from generation.store import Database


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
