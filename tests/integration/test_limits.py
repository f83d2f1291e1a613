"""The Redis concurrency limiter: limits hold under concurrent workers, and a dead worker's slots
come free when they expire."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from arq.connections import ArqRedis, create_pool

from generation.limits import Limits
from jobs.limits import ConcurrencyLimiter
from jobs.queue import redis_settings


@pytest.fixture
async def pool(redis_url: str) -> AsyncIterator[ArqRedis]:
    redis = await create_pool(redis_settings(redis_url, 1.0))
    yield redis
    await redis.aclose()


def limiter(
    pool: ArqRedis, *, per_user: int = 2, overall: int = 100, per_minute: int = 600, ttl: float = 30.0
) -> ConcurrencyLimiter:
    limits = Limits(
        per_user=per_user,
        per_provider={"replicate": 3},
        overall=overall,
        creates_per_minute={"replicate": per_minute},
    )
    return ConcurrencyLimiter(pool, limits, slot_ttl=ttl)


async def test_per_user_limit_holds_under_concurrent_acquires(pool: ArqRedis) -> None:
    limits = limiter(pool)
    results = await asyncio.gather(
        *(limits.acquire(f"g{i}", user_id=1, provider="replicate") for i in range(10))
    )
    assert sum(result is None for result in results) == 2
    assert {result.limit for result in results if result is not None} == {"user:1"}
    # A generation that holds a slot gets it again (every run refreshes its own slots).
    holders = [f"g{i}" for i, result in enumerate(results) if result is None]
    assert await limits.acquire(holders[0], user_id=1, provider="replicate") is None


async def test_provider_limit_spans_users_and_release_frees_a_slot(pool: ArqRedis) -> None:
    limits = limiter(pool, per_user=10)
    assert [await limits.acquire(f"p{i}", user_id=i, provider="replicate") for i in range(3)] == [None] * 3
    refused = await limits.acquire("p3", user_id=3, provider="replicate")
    assert refused is not None and refused.limit == "provider:replicate"
    await limits.release("p0", user_id=0, provider="replicate")
    assert await limits.acquire("p3", user_id=3, provider="replicate") is None


async def test_slots_of_a_dead_worker_expire(pool: ArqRedis) -> None:
    limits = limiter(pool, per_user=1, ttl=0.3)
    assert await limits.acquire("dead", user_id=7, provider="replicate") is None  # then its worker dies
    assert await limits.acquire("next", user_id=7, provider="replicate") is not None
    await asyncio.sleep(0.4)  # the slot's time to live, measured by Redis itself
    assert await limits.acquire("next", user_id=7, provider="replicate") is None


async def test_creates_per_minute_say_when_to_come_back(pool: ArqRedis) -> None:
    limits = limiter(pool, per_user=10, per_minute=2)
    for index in range(2):
        assert await limits.acquire(f"r{index}", user_id=index, provider="replicate") is None
        await limits.release(f"r{index}", user_id=index, provider="replicate")
    refused = await limits.acquire("r2", user_id=2, provider="replicate")
    assert refused is not None and refused.limit == "rate:replicate"
    assert 50 < refused.retry_in <= 61  # the oldest create leaves the window in about a minute


async def test_waiters_line_up_by_arrival_and_a_release_wakes_the_first(pool: ArqRedis) -> None:
    limits = limiter(pool, per_user=10)  # the provider allows 3 at once
    for index in range(3):
        assert await limits.acquire(f"h{index}", user_id=index, provider="replicate", arrival=index) is None
    # Three more arrive, out of order: each waits, and knows its place by when it was recorded.
    late = await limits.acquire("w5", user_id=5, provider="replicate", arrival=5)
    early = await limits.acquire("w3", user_id=3, provider="replicate", arrival=3)
    middle = await limits.acquire("w4", user_id=4, provider="replicate", arrival=4)
    assert late is not None and early is not None and middle is not None
    assert (early.place, middle.place) == (1, 2) and late.limit == "provider:replicate"
    assert late.retry_in > 60  # nothing polls: a wake brings it back

    assert await limits.release("h0", user_id=0, provider="replicate") == {"w3": 3000.0}  # arrival, ms
    # A newcomer does not take the slot the first in line was woken for...
    refused = await limits.acquire("new", user_id=9, provider="replicate", arrival=9)
    assert refused is not None and refused.place == 4
    # ...and a waiter behind the first does not either.
    assert await limits.acquire("w4", user_id=4, provider="replicate", arrival=4) is not None
    assert await limits.acquire("w3", user_id=3, provider="replicate", arrival=3) is None
    assert list(await limits.release("h1", user_id=1, provider="replicate")) == ["w4"]
    assert await limits.acquire("w4", user_id=4, provider="replicate", arrival=4) is None


async def test_a_waiter_stopped_by_another_limit_passes_its_wake_on(pool: ArqRedis) -> None:
    limits = limiter(pool, per_user=1)
    assert await limits.acquire("a", user_id=1, provider="replicate", arrival=1) is None
    assert await limits.acquire("b", user_id=2, provider="replicate", arrival=2) is None
    assert await limits.acquire("c", user_id=3, provider="replicate", arrival=3) is None
    first = await limits.acquire("x", user_id=4, provider="replicate", arrival=4)
    second = await limits.acquire("y", user_id=5, provider="replicate", arrival=5)
    assert first is not None and second is not None and (first.place, second.place) == (1, 2)
    # Meanwhile x's user starts another generation, which takes the user's only slot elsewhere.
    assert await limits.acquire("x-other", user_id=4, provider="elevenlabs", arrival=6) is None
    assert list(await limits.release("a", user_id=1, provider="replicate")) == ["x"]
    moved = await limits.acquire("x", user_id=4, provider="replicate", arrival=4)
    assert moved is not None and moved.limit == "user:4"
    assert list(moved.wake) == ["y"]  # the provider slot x was woken for goes to the next in line
    assert await limits.acquire("y", user_id=5, provider="replicate", arrival=5) is None
    assert list(await limits.release("x-other", user_id=4, provider="elevenlabs")) == ["x"]


async def test_the_sweep_wakes_the_first_in_line_when_a_dead_workers_slots_expire(pool: ArqRedis) -> None:
    limits = limiter(pool, per_user=1, ttl=0.3)
    assert await limits.acquire("dead", user_id=7, provider="replicate", arrival=1) is None
    assert await limits.acquire("waiting", user_id=7, provider="replicate", arrival=2) is not None
    assert not await limits.waking_heads()  # no room yet
    await asyncio.sleep(0.4)
    assert list(await limits.waking_heads()) == ["waiting"]
    assert await limits.acquire("waiting", user_id=7, provider="replicate", arrival=2) is None
    assert list(await limits.release("waiting", user_id=7, provider="replicate")) == []
    assert not await limits.waking_heads()
    assert not await pool.exists("aibot:limits:lines")  # empty lines are forgotten
