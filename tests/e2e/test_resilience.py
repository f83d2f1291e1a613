"""Webhook mode, restarts and provider trouble: the generation is finished once, never lost."""

from __future__ import annotations

import asyncio

import aiohttp

from bot.http.secrets import telegram_webhook_secret
from tests.conftest import AppFactory
from tests.e2e.helpers import Chat, all_settled, balance_and_ledger_sum, generations_of
from tests.fakes.replicate import FakeReplicate, HttpError, Outcome
from tests.fakes.telegram import FakeTelegram

FLUX = "black-forest-labs/flux-schnell"
WEBHOOK_SECRET = "webhook-secret-token-1"


async def test_webhook_mode_takes_updates_with_the_right_secret_only(
    make_app: AppFactory, telegram: FakeTelegram, replicate: FakeReplicate
) -> None:
    app = await make_app(
        bot_mode="webhook", webhook_base_url="https://bots.example.com", webhook_secret=WEBHOOK_SECRET
    )
    chat = Chat(telegram)
    webhook = telegram.webhook_of(chat.token)
    assert webhook is not None
    assert webhook["url"] == "https://bots.example.com/webhooks/telegram/image_bot"
    assert webhook["secret_token"] == telegram_webhook_secret(WEBHOOK_SECRET, "image_bot")
    url = f"http://127.0.0.1:{app.http_port}/webhooks/telegram/image_bot"
    update = chat.send("/image via webhook")
    async with aiohttp.ClientSession() as http:
        async with http.post(
            url, json=update, headers={"X-Telegram-Bot-Api-Secret-Token": "wrong"}
        ) as response:
            assert response.status == 401
        async with http.post(url, json=update) as response:
            assert response.status == 401
        assert await generations_of(app) == []
        headers = {"X-Telegram-Bot-Api-Secret-Token": webhook["secret_token"]}
        async with http.post(url, json=update, headers=headers) as response:
            assert response.status == 200
        await chat.reply("Charged 1 ⭐. Balance: 9 ⭐")
        async with http.post(url, json=update, headers=headers) as response:  # Telegram retries
            assert response.status == 200
        async with http.post(
            f"http://127.0.0.1:{app.http_port}/webhooks/telegram/ghost", json=update, headers=headers
        ) as response:
            assert response.status == 401  # as for a wrong secret: bot names are not for guessing
    await all_settled(app, 1)
    assert replicate.create_count() == 1
    assert len(await generations_of(app)) == 1


async def test_a_plan_b_generation_cut_by_a_restart_resumes_on_the_same_prediction(
    make_app: AppFactory, telegram: FakeTelegram, replicate: FakeReplicate, sqlite_url: str
) -> None:
    hold = asyncio.Event()
    replicate.script(FLUX, Outcome(hold=hold))
    first = await make_app()
    chat = Chat(telegram)
    chat.send("/image through a restart")
    await replicate.wait_for_create(1)
    await first.stop(grace=0)  # the process goes away mid-generation
    [interrupted] = await generations_of(first)
    assert interrupted.status == "running" and interrupted.plan == "B"

    second = await make_app()  # same database: the next start resumes it
    hold.set()
    await chat.reply("Charged 1 ⭐. Balance: 9 ⭐")
    [generation] = await all_settled(second, 1)
    assert generation.status == "done" and generation.attempts == 2
    assert replicate.create_count() == 1  # waited on the journaled prediction, no second create
    assert len(chat.albums()) == 1
    assert await balance_and_ledger_sum(second) == (9, 9)


async def test_plan_a_retries_a_provider_outage_then_delivers_once(
    make_app: AppFactory, telegram: FakeTelegram, replicate: FakeReplicate, redis_url: str
) -> None:
    app = await make_app(redis_url=redis_url, retry_backoff_base=0.1)
    replicate.script(
        FLUX,
        HttpError(500, "Internal Server Error", "try again"),
        HttpError(429, "Too Many Requests", "slow down", retry_after=1),
        Outcome(),
    )
    chat = Chat(telegram)
    chat.send("/image persistent")
    await chat.reply("Charged 1 ⭐. Balance: 9 ⭐")
    [generation] = await all_settled(app, 1)
    assert (generation.status, generation.attempts, generation.plan) == ("done", 3, "A")
    assert replicate.create_count() == 1  # accepted creates: the refused ones cost nothing
    assert not any("failed" in text for text in chat.texts())  # no message per retry
    assert len(chat.albums()) == 1


async def test_plan_a_gives_up_after_the_last_try_and_refunds_once(
    make_app: AppFactory, telegram: FakeTelegram, replicate: FakeReplicate, redis_url: str
) -> None:
    app = await make_app(redis_url=redis_url, retry_backoff_base=0.05, job_max_tries=3)
    replicate.fail_all_creates(HttpError(503, "Service Unavailable", "maintenance"))
    chat = Chat(telegram)
    chat.send("/image 2 never")
    await chat.reply("busy or unavailable right now")
    [generation] = await all_settled(app, 1)
    assert (generation.status, generation.attempts, generation.refunded) == ("failed", 3, 2)
    assert sum("returned" in text for text in chat.texts()) == 1
    assert await balance_and_ledger_sum(app) == (10, 10)


async def test_a_webhook_update_is_answered_once_handled_and_refused_past_the_bound(
    make_app: AppFactory, telegram: FakeTelegram, replicate: FakeReplicate
) -> None:
    app = await make_app(
        bot_mode="webhook",
        webhook_base_url="https://bots.example.com",
        webhook_secret=WEBHOOK_SECRET,
        updates_in_flight=2,
    )
    assert telegram.webhook_of(Chat(telegram).token)["max_connections"] == 2  # type: ignore[index]
    url = f"http://127.0.0.1:{app.http_port}/webhooks/telegram/image_bot"
    headers = {"X-Telegram-Bot-Api-Secret-Token": telegram_webhook_secret(WEBHOOK_SECRET, "image_bot")}
    chats = [Chat(telegram, user_id=8100 + index) for index in range(3)]
    held = telegram.hold("sendMessage")  # /start's answer hangs: its update stays in flight
    async with aiohttp.ClientSession() as http:

        async def post(update: dict[str, object]) -> int:
            async with http.post(url, json=update, headers=headers) as response:
                return response.status

        first = asyncio.create_task(post(chats[0].send("/start")))
        second = asyncio.create_task(post(chats[1].send("/start")))
        await asyncio.wait_for(held.arrived.wait(), 10)
        await asyncio.sleep(0.2)
        assert not first.done() and not second.done()  # not answered before they are handled
        third = chats[2].send("/start")
        async with http.post(url, json=third, headers=headers) as refused:
            assert refused.status == 503 and refused.headers["Retry-After"] == "1"
        held.release.set()
        assert await first == 200 and await second == 200
        assert await post(third) == 200  # Telegram's later delivery is taken

        # A generation is recorded and charged before its update is answered.
        assert await post(chats[0].send("/image answered once recorded")) == 200
        [generation] = await generations_of(app)
        assert generation.price == 1
    await chats[0].reply("Charged 1 ⭐")
    await all_settled(app, 1)
