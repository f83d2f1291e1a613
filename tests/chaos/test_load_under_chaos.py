"""The whole story at once: a load of generations on a slow provider while a worker is killed and
Redis is stopped, hung and flushed. Afterwards every generation has exactly one delivery or one
refund, the provider saw one create per generation, the ledger sums exactly, and no request waited
on a dead Redis for longer than the enqueue timeout allows."""

from __future__ import annotations

import asyncio
import signal
from collections import Counter
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from tests.conftest import API_TOKEN, AppFactory
from tests.e2e.helpers import all_settled, balance_and_ledger_sum
from tests.fakes.replicate import FakeReplicate, Outcome
from tests.fakes.tcp_proxy import TcpProxy
from tests.fakes.telegram import FakeTelegram
from tests.processes import Spawn, environment

pytestmark = pytest.mark.slow

WAVE = 10
ENQUEUE_TIMEOUT = 0.5
# A request may take the enqueue timeout plus the database work around it; a generous bound that
# still tells "fell back quickly" from "hung on Redis".
REQUEST_BOUND = ENQUEUE_TIMEOUT + 4.0


async def test_load_with_worker_kills_and_redis_outages(
    make_app: AppFactory,
    spawn: Spawn,
    telegram: FakeTelegram,
    replicate: FakeReplicate,
    redis_proxy: TcpProxy,
    postgres_url: str,
    redis_url: str,
) -> None:
    database_index = redis_url.rsplit("/", 1)[1]
    proxied = f"{redis_proxy.url}/{database_index}"
    tuning = {
        "lease_seconds": 1.5,
        "reconcile_every": 1,
        "reconcile_grace": 1.0,
        "job_wait_budget": 0.3,
        "long_wait_poll": 0.3,
        "retry_backoff_base": 0.2,
    }
    app = await make_app(
        database_url=postgres_url,
        redis_url=proxied,
        embedded_worker=False,
        redis_timeout=ENQUEUE_TIMEOUT,
        breaker_cooldown=1.0,
        **tuning,
    )
    env = environment(
        telegram,
        replicate,
        DATABASE_URL=postgres_url,
        REDIS_URL=proxied,
        JOB_TIMEOUT="5",
        **{key.upper(): str(value) for key, value in tuning.items()},
    )
    replicate.default_outcome = Outcome(polls=8)  # slow: each prediction takes several looks
    workers = [await spawn("worker", env), await spawn("worker", env)]
    latencies: list[float] = []
    answers: list[dict[str, Any]] = []

    async def submit(http: aiohttp.ClientSession, index: int) -> None:
        body = {"telegram_id": 10_000 + index, "bot_name": "image_bot", "prompt": f"load {index}"}
        loop = asyncio.get_running_loop()
        started = loop.time()
        async with http.post(
            f"http://127.0.0.1:{app.http_port}/api/generation/text-to-image",
            json=body,
            headers={"Authorization": f"Bearer {API_TOKEN}"},
        ) as response:
            assert response.status == 202, await response.text()
            answers.append(await response.json())
        latencies.append(loop.time() - started)

    async with aiohttp.ClientSession() as http:

        async def wave(number: int) -> None:
            await asyncio.gather(*(submit(http, number * WAVE + i) for i in range(WAVE)))

        await wave(0)
        await replicate.wait_for_create(5, timeout=60)
        workers[0].send_signal(signal.SIGKILL)  # a worker dies mid-run
        workers.append(await spawn("worker", env))

        await wave(1)
        await redis_proxy.refuse()  # Redis is down
        await wave(2)
        await redis_proxy.restore()

        await redis_proxy.hang()  # Redis accepts connections and answers nothing
        await wave(3)
        await redis_proxy.restore()

        flusher = aioredis.from_url(redis_url)
        await flusher.flushdb()  # Redis loses everything it had
        await flusher.aclose()
        await wave(4)

    generations = await all_settled(app, 5 * WAVE, timeout=180)
    assert len(generations) == 5 * WAVE
    assert max(latencies) < REQUEST_BOUND, sorted(latencies)[-5:]
    assert Counter(answer["plan"] for answer in answers)["B"] >= WAVE  # the outage waves fell back

    creates = Counter(
        create["input"]["prompt"] for create in replicate.creates if create["status_answered"] == 201
    )
    for generation in generations:
        chat = generation.chat_id
        assert chat is not None
        albums = telegram.sent(chat_id=chat, methods=["sendPhoto", "sendMediaGroup"])
        if generation.status == "done":
            assert len(albums) == 1, generation.id
            assert generation.refunded == 0
        else:
            assert generation.status == "failed" and albums == []
            assert generation.refunded == generation.price
        assert creates[generation.request["prompt"]] <= 1, generation.request["prompt"]
        balance, ledger_sum = await balance_and_ledger_sum(app, chat)
        assert balance == ledger_sum == 10 - (generation.price - generation.refunded)
    assert sum(creates.values()) == sum(g.status == "done" for g in generations)
