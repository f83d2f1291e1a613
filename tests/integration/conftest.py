"""What the integration tests share: a migrated database of each kind (tests/conftest.py's
`database_url`: SQLite and PostgreSQL), closed after the test."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from generation.sqlite_connections import WholeStatementConnection
from generation.store import Database
from migrations.runner import upgrade


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    await asyncio.to_thread(upgrade, database_url)
    database = Database(database_url)
    yield database
    await database.close()


class Trips:
    """Hand-offs to SQLite connections' threads (generation/sqlite_connections.py), counted."""

    count = 0


@pytest.fixture
def count_sqlite_trips(monkeypatch: pytest.MonkeyPatch) -> Callable[[], Trips]:
    """Call it to count every trip to a SQLite connection's thread from then on."""

    def start() -> Trips:
        trips = Trips()
        original = WholeStatementConnection._execute

        async def counted(self: WholeStatementConnection, fn: Any, *args: Any, **kwargs: Any) -> Any:
            trips.count += 1
            return await original(self, fn, *args, **kwargs)

        monkeypatch.setattr(WholeStatementConnection, "_execute", counted)
        return trips

    return start
