"""Round trips to Redis, counted at redis-py's pool: a command sent alone, or a pipeline of them,
takes a connection from the pool once (as bench/counted.py counts them)."""

from __future__ import annotations

from typing import Any

import pytest
import redis.asyncio as aioredis


def count_round_trips(redis: aioredis.Redis, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """From now until the test ends, each checkout of `redis`'s pool adds one to the list's item."""
    taken = [0]
    pool: Any = redis.connection_pool
    real = pool.get_connection

    async def get_connection(*args: Any, **kwargs: Any) -> Any:
        taken[0] += 1
        return await real(*args, **kwargs)

    monkeypatch.setattr(pool, "get_connection", get_connection)
    return taken
