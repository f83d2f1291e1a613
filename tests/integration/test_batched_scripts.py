"""Calls of a Lua script made while another is on its way go to Redis together (jobs/batched_scripts.py),
against real Redis: each call still gets its own answer or its own error, in fewer round trips; a
call alone goes alone, at once after a quiet moment; calls coming in a stream wait a moment for each
other; a flushed script is loaded again; a call cancelled before its batch left is not
made; a hung Redis fails the calls in time, and they work again once it answers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from jobs.batched_scripts import LINGER, BatchedScript
from tests.fakes.tcp_proxy import TcpProxy
from tests.integration.redis_trips import count_round_trips

# Sets its key to its argument and answers "<argument>!", or fails when the argument is "bad".
SET_AND_ANSWER = """
if ARGV[1] == 'bad' then return redis.error_reply('a bad call') end
redis.call('SET', KEYS[1], ARGV[1])
return ARGV[1] .. '!'
"""


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    redis = aioredis.from_url(redis_url)
    yield redis
    await redis.aclose()


async def test_calls_made_at_once_share_round_trips_and_each_gets_its_own_answer(
    client: aioredis.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    script = BatchedScript(client, SET_AND_ANSWER)
    await script(keys=["batched:warm"], args=["warm"])  # loaded once, as any script
    await asyncio.sleep(LINGER * 10)  # a quiet moment: the next call goes at once
    trips = count_round_trips(client, monkeypatch)

    answers = await asyncio.gather(*(script(keys=[f"batched:{n}"], args=[f"v{n}"]) for n in range(100)))

    # The first went alone; the 99 that came while it was on its way went together.
    assert trips[0] == 2 and script.batches == 1
    assert answers == [f"v{n}!".encode() for n in range(100)]
    assert await client.mget([f"batched:{n}" for n in range(100)]) == [f"v{n}".encode() for n in range(100)]


async def test_a_call_alone_goes_alone(client: aioredis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    script = BatchedScript(client, SET_AND_ANSWER)
    trips = count_round_trips(client, monkeypatch)
    assert await script(keys=["batched:alone"], args=["one"]) == b"one!"
    assert await script(keys=["batched:alone"], args=["two"]) == b"two!"
    assert trips[0] == 2 and script.batches == 0  # one trip each, no pipeline (and the script loaded)


async def test_calls_that_come_one_by_one_in_a_stream_wait_a_moment_and_go_together(
    client: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each comes after the one before came back, so none is on its way for it to wait for; coming
    within `linger` of the one before, each waits for the next, and they go in one round trip."""
    script = BatchedScript(client, SET_AND_ANSWER, linger=0.5)
    await script(keys=["batched:warm"], args=["warm"])  # loaded
    await asyncio.sleep(0.6)  # a quiet moment
    trips = count_round_trips(client, monkeypatch)

    assert await asyncio.wait_for(script(keys=["batched:0"], args=["0"]), 0.4) == b"0!"  # at once
    assert trips[0] == 1
    stream = []
    for n in range(1, 6):
        stream.append(asyncio.create_task(script(keys=[f"batched:{n}"], args=[str(n)])))
        await asyncio.sleep(0.01)
    assert not any(call.done() for call in stream) and trips[0] == 1  # still waiting for the rest

    assert await asyncio.gather(*stream) == [f"{n}!".encode() for n in range(1, 6)]
    assert trips[0] == 2 and script.batches == 1
    assert await client.mget([f"batched:{n}" for n in range(6)]) == [str(n).encode() for n in range(6)]


async def test_many_calls_go_in_one_round_trip(
    client: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = BatchedScript(client, SET_AND_ANSWER)
    await script(keys=["batched:warm"], args=["warm"])
    trips = count_round_trips(client, monkeypatch)
    answers = await script.many([([f"batched:many:{n}"], [str(n)]) for n in range(20)])
    assert answers == [f"{n}!".encode() for n in range(20)]
    assert trips[0] == 1


async def test_each_call_gets_its_own_error(client: aioredis.Redis) -> None:
    script = BatchedScript(client, SET_AND_ANSWER)
    arguments = ["good", "bad", "good", "bad", "good"]
    outcomes = await asyncio.gather(
        *(script(keys=[f"batched:mixed:{n}"], args=[value]) for n, value in enumerate(arguments)),
        return_exceptions=True,
    )
    assert [type(outcome) for outcome in outcomes] == [bytes, ResponseError, bytes, ResponseError, bytes]
    assert all("a bad call" in str(outcome) for outcome in outcomes[1::2])
    assert script.batches == 1  # the four after the first went together, the errors among them
    many = await script.many([(["batched:m1"], ["bad"]), (["batched:m2"], ["fine"])])
    assert isinstance(many[0], ResponseError) and many[1] == b"fine!"


async def test_a_script_redis_forgot_is_loaded_again(client: aioredis.Redis) -> None:
    script = BatchedScript(client, SET_AND_ANSWER)
    await script(keys=["batched:before"], args=["x"])
    await client.script_flush()  # as a restart of Redis would

    answers = await script.many([([f"batched:flushed:{n}"], [str(n)]) for n in range(5)])
    assert answers == [f"{n}!".encode() for n in range(5)]
    await client.script_flush()
    answers = list(await asyncio.gather(*(script(keys=["batched:again"], args=[str(n)]) for n in range(5))))
    assert answers == [f"{n}!".encode() for n in range(5)]


@pytest.fixture
async def proxied(redis_proxy: TcpProxy, client: aioredis.Redis) -> AsyncIterator[aioredis.Redis]:
    """A client of the same Redis database, through a proxy that can hang (`redis_proxy`)."""
    database = client.connection_pool.connection_kwargs["db"]
    through_proxy = aioredis.from_url(f"{redis_proxy.url}/{database}")
    yield through_proxy
    await through_proxy.aclose()


async def test_a_call_cancelled_before_its_batch_left_is_not_made(
    redis_proxy: TcpProxy, proxied: aioredis.Redis, client: aioredis.Redis
) -> None:
    script = BatchedScript(proxied, SET_AND_ANSWER)
    await script(keys=["batched:warm"], args=["warm"])
    await redis_proxy.hang()
    first = asyncio.create_task(script(keys=["batched:first"], args=["1"]))
    await asyncio.sleep(0.1)  # on its way, unanswered
    waiting = asyncio.create_task(script(keys=["batched:cancelled"], args=["2"]))
    await asyncio.sleep(0.05)
    waiting.cancel()
    await redis_proxy.restore()  # drops the connection the first call is on
    with pytest.raises(RedisError):
        await first
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert await script(keys=["batched:after"], args=["3"]) == b"3!"  # and it goes on
    assert await client.get("batched:cancelled") is None


async def test_a_hung_redis_fails_the_calls_in_time_and_they_work_again_once_it_answers(
    redis_proxy: TcpProxy, proxied: aioredis.Redis
) -> None:
    script = BatchedScript(proxied, SET_AND_ANSWER, within=0.5)
    await script(keys=["batched:warm"], args=["warm"])
    await asyncio.sleep(LINGER * 10)  # a quiet moment: the next call goes at once
    await redis_proxy.hang()
    began = asyncio.get_running_loop().time()
    outcomes = await asyncio.gather(
        *(script(keys=[f"batched:hung:{n}"], args=[str(n)]) for n in range(10)), return_exceptions=True
    )
    waited = asyncio.get_running_loop().time() - began
    # The first failed on its own, then the nine that waited for it, as one batch, in time.
    assert all(isinstance(outcome, RedisError) for outcome in outcomes), outcomes
    assert all(isinstance(outcome, RedisTimeoutError) for outcome in outcomes[1:]), outcomes
    assert waited < 5
    await redis_proxy.restore()
    answers = await asyncio.gather(*(script(keys=[f"batched:back:{n}"], args=[str(n)]) for n in range(10)))
    assert answers == [f"{n}!".encode() for n in range(10)]
