"""The HTTP API (SPEC §2.3) driven over loopback, on both plans and both databases."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from sqlalchemy.engine import make_url

from app import App
from tests.conftest import API_TOKEN, AppFactory
from tests.e2e.helpers import USER, Chat, all_settled, balance_and_ledger_sum, generations_of
from tests.fakes.replicate import FakeReplicate
from tests.fakes.tcp_proxy import TcpProxy
from tests.fakes.telegram import FakeTelegram

AUTH = {"Authorization": f"Bearer {API_TOKEN}"}


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def base(app: App) -> str:
    return f"http://127.0.0.1:{app.http_port}"


async def post_image(
    http: aiohttp.ClientSession, app: App, body: dict[str, Any], headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    async with http.post(
        f"{base(app)}/api/generation/text-to-image", json=body, headers={**AUTH, **(headers or {})}
    ) as response:
        return response.status, await response.json()


async def read(http: aiohttp.ClientSession, app: App, generation_id: str) -> dict[str, Any]:
    async with http.get(f"{base(app)}/api/generations/{generation_id}", headers=AUTH) as response:
        assert response.status == 200
        body: dict[str, Any] = await response.json()
        return body


SEED = {"telegram_id": USER, "username": "fox", "is_ru": False, "bot_name": "image_bot"}


async def test_a_generation_is_accepted_then_readable_with_its_result(
    make_app: AppFactory, http: aiohttp.ClientSession, telegram: FakeTelegram, replicate: FakeReplicate
) -> None:
    app = await make_app()
    status, body = await post_image(http, app, {**SEED, "prompt": "a fox", "num_images": 2})
    assert status == 202
    assert body["plan"] == "B" and body["status"] in {"queued", "running", "done"}
    await Chat(telegram).reply("Charged 2 ⭐. Balance: 8 ⭐")  # delivered to the user's chat
    await all_settled(app, 1)
    result = await read(http, app, body["id"])
    assert result["status"] == "done"
    assert result["price"] == 2 and result["attempts"] == 1 and result["plan"] == "B"
    assert len(result["urls"]) == 2 and all(url.startswith(replicate.url) for url in result["urls"])


async def test_idempotency_key_makes_a_repeat_return_the_same_generation(
    make_app: AppFactory,
    http: aiohttp.ClientSession,
    replicate: FakeReplicate,
    database_url: str,
    redis_url: str,
) -> None:
    app = await make_app(database_url=database_url, redis_url=redis_url)
    headers = {"Idempotency-Key": "order-1"}
    answers = await asyncio.gather(
        *(post_image(http, app, {**SEED, "prompt": "same"}, headers) for _ in range(5))
    )
    assert {status for status, _ in answers} == {202}
    assert len({body["id"] for _, body in answers}) == 1
    assert {body["plan"] for _, body in answers} == {"A"}
    await all_settled(app, 1)
    assert replicate.create_count() == 1
    assert await balance_and_ledger_sum(app) == (9, 9)
    # The same prompt without the key (or with another key) is a new generation, on purpose.
    status, other = await post_image(http, app, {**SEED, "prompt": "same"}, {"Idempotency-Key": "order-2"})
    assert status == 202 and other["id"] != answers[0][1]["id"]


async def test_concurrent_requests_race_for_one_balance(
    make_app: AppFactory,
    http: aiohttp.ClientSession,
    replicate: FakeReplicate,
    database_url: str,
    redis_url: str,
) -> None:
    app = await make_app(database_url=database_url, redis_url=redis_url, new_user_bonus=7)
    answers = await asyncio.gather(*(post_image(http, app, {**SEED, "prompt": f"n{i}"}) for i in range(20)))
    statuses = sorted(status for status, _ in answers)
    assert statuses.count(202) == 7 and statuses.count(402) == 13
    generations = await all_settled(app, 7)
    assert len(generations) == 7 and {g.status for g in generations} == {"done"}
    assert replicate.create_count() == 7
    assert await balance_and_ledger_sum(app) == (0, 0)


async def test_bad_input_answers_422_with_every_reason_and_costs_nothing(
    make_app: AppFactory, http: aiohttp.ClientSession, replicate: FakeReplicate
) -> None:
    app = await make_app()
    status, problems = await post_image(
        http, app, {**SEED, "prompt": "x" * 2500, "num_images": 9, "bot_name": "image_bot"}
    )
    assert status == 422
    assert isinstance(problems, list)
    assert {problem["field"] for problem in problems} == {"prompt", "num_images"}
    assert all(problem["message"] for problem in problems)

    status, problems = await post_image(http, app, {**SEED, "prompt": "ok", "bot_name": "nobody"})
    assert status == 422 and problems[0]["code"] == "unknown_bot"
    status, problems = await post_image(http, app, {**SEED, "prompt": "ok", "model": "dall-e"})
    assert status == 422 and problems[0]["code"] == "unknown_model"
    status, problems = await post_image(http, app, {"prompt": "who am I"})
    assert status == 422 and problems[0] == {
        "field": "telegram_id",
        "code": "missing",
        "message": "This field is required.",
    }
    async with http.post(
        f"{base(app)}/api/generation/text-to-image", data=b"{not json", headers=AUTH
    ) as response:
        assert response.status == 422
    assert replicate.creates == []
    assert await generations_of(app) == []


async def test_auth_kinds_and_balance_errors(
    make_app: AppFactory, http: aiohttp.ClientSession, replicate: FakeReplicate
) -> None:
    app = await make_app(new_user_bonus=1)
    url = f"{base(app)}/api/generation/text-to-image"
    async with http.post(url, json={**SEED, "prompt": "a"}) as response:
        assert response.status == 401
    async with http.post(
        url, json={**SEED, "prompt": "a"}, headers={"Authorization": "Bearer wrong"}
    ) as response:
        assert response.status == 401
    async with http.post(f"{base(app)}/api/generation/telepathy", json=SEED, headers=AUTH) as response:
        assert response.status == 404
    status, body = await post_image(http, app, {**SEED, "prompt": "four", "num_images": 4})
    assert status == 402 and body == {"error": "insufficient balance", "needed": 4, "balance": 1}
    async with http.get(f"{base(app)}/api/generations/nope", headers=AUTH) as response:
        assert response.status == 404
    assert replicate.creates == []


async def test_without_api_token_the_api_answers_503(
    make_app: AppFactory, http: aiohttp.ClientSession
) -> None:
    app = await make_app(api_token=None)
    async with http.post(f"{base(app)}/api/generation/text-to-image", json=SEED, headers=AUTH) as response:
        assert response.status == 503


async def test_health_reports_database_redis_and_plan(
    make_app: AppFactory, http: aiohttp.ClientSession, redis_url: str
) -> None:
    app = await make_app(redis_url=redis_url)
    async with http.get(f"{base(app)}/healthz", headers=AUTH) as response:
        assert response.status == 200
        assert await response.json() == {
            "status": "ok",
            "database": True,
            "redis": True,
            "plan": "A",
            "mode": "auto",
            "mode_source": "env",
            "breaker": "closed",
        }


async def test_without_bots_the_http_api_still_generates(
    make_app: AppFactory, http: aiohttp.ClientSession, replicate: FakeReplicate
) -> None:
    app = await make_app(bot_tokens={})
    status, body = await post_image(http, app, {"telegram_id": 5, "prompt": "headless", "num_images": 2})
    assert status == 202
    await all_settled(app, 1)
    result = await read(http, app, body["id"])
    assert result["status"] == "done" and len(result["urls"]) == 2


async def test_redis_failing_at_enqueue_serves_the_request_on_plan_b_once(
    make_app: AppFactory,
    http: aiohttp.ClientSession,
    telegram: FakeTelegram,
    replicate: FakeReplicate,
    redis_proxy: TcpProxy,
    redis_url: str,
) -> None:
    app = await make_app(redis_url=f"{redis_proxy.url}/{redis_url.rsplit('/', 1)[1]}")
    await redis_proxy.refuse()  # Redis goes away after start
    status, body = await post_image(http, app, {**SEED, "prompt": "during an outage"})
    assert status == 202 and body["plan"] == "B"
    await Chat(telegram).reply("Charged 1 ⭐")
    [generation] = await all_settled(app, 1)
    assert (generation.plan, generation.status) == ("B", "done")
    assert replicate.create_count() == 1
    # The breaker is open now: the next request goes straight to Plan B without touching Redis.
    assert app.generations is not None and app.generations.breaker.state.value == "open"
    status, body = await post_image(http, app, {**SEED, "prompt": "still out"})
    assert body["plan"] == "B"


async def test_a_hung_redis_does_not_hang_the_request(
    make_app: AppFactory,
    http: aiohttp.ClientSession,
    replicate: FakeReplicate,
    redis_proxy: TcpProxy,
    redis_url: str,
) -> None:
    app = await make_app(redis_url=f"{redis_proxy.url}/{redis_url.rsplit('/', 1)[1]}", redis_timeout=0.5)
    await redis_proxy.hang()  # accepts connections, answers nothing
    loop = asyncio.get_running_loop()
    started = loop.time()
    status, body = await post_image(http, app, {**SEED, "prompt": "hung"})
    elapsed = loop.time() - started
    assert status == 202 and body["plan"] == "B"
    assert elapsed < 5  # bounded by the enqueue timeout, not by Redis
    await all_settled(app, 1)
    assert replicate.create_count() == 1
    async with http.get(f"{base(app)}/healthz", headers=AUTH) as response:  # nor does health
        health = await response.json()
    assert (response.status, health["redis"], health["plan"], health["breaker"]) == (200, False, "B", "open")


async def test_with_the_database_gone_a_request_is_refused_503_and_costs_nothing(
    make_app: AppFactory, http: aiohttp.ClientSession, postgres_url: str, replicate: FakeReplicate
) -> None:
    """PostgreSQL stops answering: a new generation is refused with 503 and Retry-After (not a 500),
    nothing is recorded or charged, and the same request succeeds once the database is back."""
    address = make_url(postgres_url)
    proxy = TcpProxy(address.host or "127.0.0.1", address.port or 5432)
    await proxy.start()
    proxied = address.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    try:
        app = await make_app(database_url=proxied)
        await proxy.refuse()
        async with http.post(
            f"{base(app)}/api/generation/text-to-image",
            json={**SEED, "prompt": "while the database is gone"},
            headers={**AUTH, "Idempotency-Key": "db-gone-1"},
        ) as response:
            assert response.status == 503 and response.headers["Retry-After"] == "5"
        assert replicate.create_count() == 0
        await proxy.restore()
        status, body = await post_image(
            http, app, {**SEED, "prompt": "while the database is gone"}, {"Idempotency-Key": "db-gone-1"}
        )
        assert status == 202
        [generation] = await all_settled(app, 1)
        assert generation.id == body["id"] and generation.price == 1
    finally:
        await proxy.stop()
