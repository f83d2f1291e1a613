"""What the integration tests share: a migrated database of each kind (tests/conftest.py's
`database_url`: SQLite and PostgreSQL), closed after the test."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from generation.store import Database
from migrations.runner import upgrade


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    await asyncio.to_thread(upgrade, database_url)
    database = Database(database_url)
    yield database
    await database.close()
