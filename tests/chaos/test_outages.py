"""Redis lost, flushed or hung, a provider that times out, Telegram flood control and a user who
blocked the bot: every generation still ends with one delivery or one refund, one create each."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
import redis.asyncio as aioredis

from tests.conftest import ADMIN_ID, API_TOKEN, AppFactory
from tests.e2e.helpers import Chat, all_settled, balance_and_ledger_sum
from tests.fakes.replicate import FakeReplicate, Outcome
from tests.fakes.tcp_proxy import TcpProxy
from tests.fakes.telegram import FakeTelegram

pytestmark = pytest.mark.slow

FLUX = "black-forest-labs/flux-schnell"
FAST_PLAN_A = {"job_wait_budget": 0.2, "long_wait_poll": 0.3, "retry_backoff_base": 0.1}


async def test_redis_flushed_mid_run_loses_no_generation(
    make_app: AppFactory, telegram: FakeTelegram, replicate: FakeReplicate, redis_url: str
) -> None:
    app = await make_app(redis_url=redis_url, reconcile_every=1, reconcile_grace=0.5, **FAST_PLAN_A)
    hold = asyncio.Event()
    replicate.script(FLUX, Outcome(hold=hold))
    chat = Chat(telegram)
    chat.send("/image 2 through a flush")
    await replicate.wait_for_create(1)
    client = aioredis.from_url(redis_url)
    await client.flushdb()  # Redis forgets the queued job, its retry, the limits: everything
    await client.aclose()
    hold.set()
    await chat.reply("Charged 2 ⭐. Balance: 8 ⭐", timeout=30)
    [generation] = await all_settled(app, 1)
    assert (generation.plan, generation.status) == ("A", "done")
    assert replicate.create_count() == 1  # the re-enqueued job waited on the journaled prediction
    assert len(chat.albums()) == 1
    assert await balance_and_ledger_sum(app) == (8, 8)


async def test_redis_down_then_back_mid_run(
    make_app: AppFactory,
    telegram: FakeTelegram,
    replicate: FakeReplicate,
    redis_proxy: TcpProxy,
    redis_url: str,
) -> None:
    app = await make_app(
        redis_url=f"{redis_proxy.url}/{redis_url.rsplit('/', 1)[1]}",
        breaker_cooldown=0.5,
        lease_seconds=1.0,  # the job cut off with the connection is taken over one lease later
        reconcile_every=1,
        reconcile_grace=0.5,
        **FAST_PLAN_A,
    )
    hold = asyncio.Event()
    replicate.script(FLUX, Outcome(hold=hold))
    first = Chat(telegram)
    first.send("/image before the outage")
    await replicate.wait_for_create(1)

    await redis_proxy.refuse()  # Redis goes away: the embedded worker loses its connection
    during = Chat(telegram, user_id=4242)
    during.send("/image during the outage")
    await during.reply("Charged 1 ⭐", timeout=30)  # served on Plan B meanwhile
    await Chat(telegram, user_id=ADMIN_ID).reply("Plan switched: A → B")  # the admins are told

    await redis_proxy.restore()  # Redis is back: the worker reconnects, the waiting job resumes
    hold.set()
    await first.reply("Charged 1 ⭐", timeout=45)
    generations = await all_settled(app, 2)
    assert sorted((g.plan, g.status) for g in generations) == [("A", "done"), ("B", "done")]
    assert replicate.create_count() == 2
    assert len(first.albums()) == 1 and len(during.albums()) == 1

    after = Chat(telegram, user_id=4343)  # after a probe the breaker closes: Plan A again
    assert app.generations is not None
    await asyncio.sleep(0.6)  # the breaker's cooldown (0.5 s) must pass before it probes
    after.send("/image after the outage")
    await after.reply("Charged 1 ⭐", timeout=30)
    await Chat(telegram, user_id=ADMIN_ID).reply("Plan switched: B → A")
    latest = await all_settled(app, 3)
    assert {g.plan for g in latest if g.chat_id == 4343} == {"A"}


async def test_a_create_that_times_out_is_found_not_paid_twice(
    make_app: AppFactory, telegram: FakeTelegram, replicate: FakeReplicate, redis_url: str
) -> None:
    app = await make_app(redis_url=redis_url, provider_timeout=1.0, **FAST_PLAN_A)
    replicate.hold_create_answers = asyncio.Event()  # the prediction is made; its answer never comes
    chat = Chat(telegram)
    chat.send("/image slow provider")
    await replicate.wait_for_create(1)
    await asyncio.sleep(1.2)  # past the provider timeout: the try fails and is retried
    replicate.hold_create_answers.set()
    replicate.hold_create_answers = None
    await chat.reply("Charged 1 ⭐. Balance: 9 ⭐", timeout=30)
    [generation] = await all_settled(app, 1)
    assert generation.status == "done" and generation.failures >= 1
    assert replicate.create_count() == 1


async def test_telegram_flood_control_on_delivery_is_waited_out(
    make_app: AppFactory, telegram: FakeTelegram, replicate: FakeReplicate, redis_url: str
) -> None:
    app = await make_app(redis_url=redis_url, **FAST_PLAN_A)
    telegram.fail_next(
        "sendMediaGroup", error_code=429, description="Too Many Requests: retry after 1", retry_after=1
    )
    chat = Chat(telegram)
    chat.send("/image 2 flood")
    await chat.reply("Charged 2 ⭐. Balance: 8 ⭐", timeout=30)
    [generation] = await all_settled(app, 1)
    assert generation.status == "done" and generation.failures == 1
    assert len(chat.albums()) == 1
    assert replicate.create_count() == 1


async def test_a_user_who_blocked_the_bot_is_refunded_and_costs_no_provider_call(
    make_app: AppFactory, telegram: FakeTelegram, replicate: FakeReplicate, redis_url: str
) -> None:
    """An API request for a chat that blocked the bot: its status message goes out before the paid
    call (only a Telegram update proves a chat hears the bot), fails, and the try is refunded."""
    app = await make_app(redis_url=redis_url, **FAST_PLAN_A)
    chat = Chat(telegram)
    await chat.ask("/start", "Your balance: 10 ⭐")
    telegram.block_user(chat.token, chat.user_id)
    body = {"telegram_id": chat.user_id, "bot_name": "image_bot", "prompt": "into the void", "num_images": 3}
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"http://127.0.0.1:{app.http_port}/api/generation/text-to-image",
            json=body,
            headers={"Authorization": f"Bearer {API_TOKEN}"},
        ) as response,
    ):
        assert response.status == 202
    [generation] = await all_settled(app, 1, timeout=30)
    assert (generation.status, generation.refunded) == ("failed", 3)
    assert "blocked" in (generation.error or "")
    assert replicate.creates == []
    assert await balance_and_ledger_sum(app) == (10, 10)


async def test_blocked_during_delivery_refunds_what_was_not_delivered(
    make_app: AppFactory, telegram: FakeTelegram, replicate: FakeReplicate
) -> None:
    app = await make_app()
    telegram.fail_next("sendMediaGroup", error_code=403, description="Forbidden: bot was blocked by the user")
    chat = Chat(telegram)
    chat.send("/image 2 blocked at the last moment")
    [generation] = await all_settled(app, 1, timeout=30)
    assert (generation.status, generation.refunded) == ("failed", 2)
    assert replicate.create_count() == 1
    assert await balance_and_ledger_sum(app) == (10, 10)
