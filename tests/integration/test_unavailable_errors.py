"""Which database errors mean "try again later" (503, Telegram redelivers) and which are the request's
own fault and would fail again on every repeat (a handler's error: answered, logged, not retried)."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import create_async_engine

from bot.http.responses import is_unavailable
from tests.conftest import closed_port


async def test_a_value_postgresql_cannot_store_is_not_unavailability(postgres_url: str) -> None:
    engine = create_async_engine(postgres_url)
    try:
        async with engine.connect() as connection:
            with pytest.raises(DBAPIError) as raised:
                await connection.execute(text("SELECT CAST(:value AS text)"), {"value": "order\x00id"})
    finally:
        await engine.dispose()
    assert not is_unavailable(raised.value)


async def test_a_database_that_does_not_answer_is_unavailability() -> None:
    engine = create_async_engine(f"postgresql+asyncpg://postgres@127.0.0.1:{closed_port()}/test")
    try:
        with pytest.raises(OSError) as raised:
            async with engine.connect():
                pass
    finally:
        await engine.dispose()
    assert is_unavailable(raised.value)


def test_other_errors_are_not_unavailability() -> None:
    assert not is_unavailable(ValueError("a bug"))
    assert is_unavailable(TimeoutError())
