"""Alerts to the admins in Telegram (generation/alerts.py), against the fake Telegram, Replicate and
ElevenLabs: a provider account out of credit or refusing our token, a failure rate over the threshold,
the queue's breaker open. Each is told once per ALERT_REPEAT_AFTER, to every admin, and "back to
normal" once when it clears; two processes on one database never both tell the same."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from app import App
from generation.alerts import Alerts, Notice
from tests.conftest import ADMIN_ID, API_TOKEN, AppFactory, wait_until
from tests.constants import BOT_TOKEN
from tests.e2e.helpers import USER, Chat, all_settled, generations_of
from tests.fakes.elevenlabs import ApiError, FakeElevenLabs
from tests.fakes.replicate import FakeReplicate, HttpError, Outcome
from tests.fakes.tcp_proxy import TcpProxy
from tests.fakes.telegram import FakeTelegram

FLUX = "black-forest-labs/flux-schnell"
SECOND_ADMIN = ADMIN_ID + 1
# Two processes on one database take their work over HTTP: both polling one bot would fight over it.
WEBHOOK_MODE = {
    "bot_mode": "webhook",
    "webhook_base_url": "https://bots.example.com",
    "webhook_secret": "s3cret-hook",
}


def told(telegram: FakeTelegram, admin_id: int, containing: str) -> list[str]:
    """What the default bot told an admin that contains `containing`."""
    return [
        call.text or ""
        for call in telegram.sent(BOT_TOKEN, chat_id=admin_id, methods=["sendMessage"])
        if containing in (call.text or "")
    ]


async def runs_ended(app: App) -> None:
    """Plan B runs, the alert after a failure included, are over."""
    assert app.inline is not None
    inline = app.inline

    async def idle() -> bool:
        return not inline.tasks

    await wait_until(idle)


async def post_image(app: App, prompt: str, telegram_id: int = USER) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"http://127.0.0.1:{app.http_port}/api/generation/text-to-image",
            json={"telegram_id": telegram_id, "bot_name": "image_bot", "prompt": prompt},
            headers={"Authorization": f"Bearer {API_TOKEN}"},
        ) as response,
    ):
        assert response.status == 202, await response.text()


@pytest.mark.parametrize(
    ("provider", "command", "english", "russian"),
    [
        (
            "replicate",
            "/image a secret fox",
            "replicate: our account is out of credit or quota (ProviderQuotaExceeded)",
            "replicate: на нашем счёте закончились средства или квота (ProviderQuotaExceeded)",
        ),
        (
            "elevenlabs",
            "/speech a secret greeting",
            "elevenlabs refuses our credentials (ProviderMisconfigured): check its API token",
            "elevenlabs не принимает наши учётные данные (ProviderMisconfigured)",
        ),
    ],
)
async def test_an_operator_error_alerts_every_admin_once_in_their_language(
    make_app: AppFactory,
    telegram: FakeTelegram,
    replicate: FakeReplicate,
    elevenlabs: FakeElevenLabs,
    provider: str,
    command: str,
    english: str,
    russian: str,
) -> None:
    app = await make_app(admin_ids=[ADMIN_ID, SECOND_ADMIN], new_user_bonus=100)
    await Chat(telegram, user_id=ADMIN_ID, language="ru").ask(
        "/start", "Привет"
    )  # an admin who reads Russian
    if provider == "replicate":
        replicate.fail_all_creates(HttpError(402, "Payment Required", "You have insufficient credit"))
    else:
        elevenlabs.fail_next("tts", ApiError.invalid_api_key(), times=2)
    chat = Chat(telegram)
    for attempt in (1, 2):  # the second failure comes within ALERT_REPEAT_AFTER
        chat.send(f"{command} {attempt}")
        await all_settled(app, attempt)
        await runs_ended(app)  # its alert, if any, is out
    assert [generation.status for generation in await all_settled(app, 2)] == ["failed", "failed"]
    assert len(told(telegram, USER, "returned")) == 2  # the user has their refund each time

    [alert] = told(telegram, SECOND_ADMIN, english)
    assert told(telegram, ADMIN_ID, russian)[0].startswith("⚠️")
    assert len(told(telegram, ADMIN_ID, provider)) == 1
    # What is wrong and where, nothing of the user's: not their id, not their request.
    assert str(USER) not in alert and "secret" not in alert


async def test_a_failure_rate_over_the_threshold_is_alerted_once_then_back_to_normal_once(
    make_app: AppFactory, telegram: FakeTelegram, replicate: FakeReplicate
) -> None:
    app = await make_app(alert_check_every=0.05, alert_min_generations=4, alert_failure_rate=0.5)
    assert app.services is not None
    replicate.script(FLUX, *[Outcome(status="failed", error="the model crashed")] * 4)
    chat = Chat(telegram)
    for index in range(4):
        chat.send(f"/image failing {index}")
    await Chat(telegram, user_id=ADMIN_ID).reply("Many generations fail: 4 of 4 in the last 15 min (100%)")
    alerts = Alerts(app.services)
    await asyncio.gather(alerts.check(), alerts.check())  # more looks, alongside the periodic ones
    assert len(told(telegram, ADMIN_ID, "Many generations fail")) == 1

    for index in range(5):  # successes bring the rate under the threshold
        chat.send(f"/image working {index}")
    await all_settled(app, 9)
    await Chat(telegram, user_id=ADMIN_ID).reply("✅ Failures back to normal")
    await asyncio.gather(alerts.check(), alerts.check())
    assert len(told(telegram, ADMIN_ID, "Failures back to normal")) == 1
    assert len(told(telegram, ADMIN_ID, "Many generations fail")) == 1


async def test_a_provider_alert_clears_when_a_generation_on_it_succeeds(
    make_app: AppFactory, telegram: FakeTelegram, replicate: FakeReplicate
) -> None:
    app = await make_app(alert_check_every=0.05)
    replicate.script(FLUX, HttpError(402, "Payment Required", "You have insufficient credit"))
    chat = Chat(telegram)
    chat.send("/image before the top-up")
    admin = Chat(telegram, user_id=ADMIN_ID)
    await admin.reply("replicate: our account is out of credit")
    chat.send("/image after the top-up")  # the next create succeeds
    await admin.reply("✅ replicate is back to normal: a generation on it succeeded.")
    await all_settled(app, 2)
    assert app.services is not None
    await Alerts(app.services).check()
    assert len(told(telegram, ADMIN_ID, "replicate is back to normal")) == 1


async def test_the_breaker_is_alerted_once_over_two_processes_and_a_flap(
    make_app: AppFactory,
    telegram: FakeTelegram,
    replicate: FakeReplicate,
    redis_proxy: TcpProxy,
    redis_url: str,
    database_url: str,
) -> None:
    settings: dict[str, Any] = {
        "database_url": database_url,
        "redis_url": f"{redis_proxy.url}/{redis_url.rsplit('/', 1)[1]}",
        "breaker_cooldown": 0.3,
        "embedded_worker": False,  # Plan A's jobs need not run: only where they are sent matters
        **WEBHOOK_MODE,
    }
    first, second = await make_app(**settings), await make_app(**settings)
    await redis_proxy.refuse()
    # Both processes' breakers open at once: one alert.
    await asyncio.gather(post_image(first, "a fox"), post_image(second, "a cat"))
    [opened] = told(telegram, ADMIN_ID, "Plan switched: A → B")
    assert "queue unavailable" in opened

    await redis_proxy.restore()
    await asyncio.sleep(0.35)  # the breaker's cooldown must pass before it probes the queue again
    await post_image(first, "a probe")  # the probe gets through: Plan A again, and that is told once
    assert len(told(telegram, ADMIN_ID, "Plan switched: B → A")) == 1

    await redis_proxy.refuse()
    await post_image(first, "a flap")  # open again soon after: not told again within the repeat time
    assert len(told(telegram, ADMIN_ID, "Plan switched: A → B")) == 1
    # The probe alone went to Plan A (and stays queued: no worker runs here).
    assert sorted(generation.plan for generation in await generations_of(first)) == ["A", "B", "B", "B"]


async def test_a_queue_backing_up_is_alerted_then_back_to_normal(
    make_app: AppFactory, telegram: FakeTelegram, replicate: FakeReplicate, redis_url: str
) -> None:
    app = await make_app(
        redis_url=redis_url,
        embedded_worker=False,
        alert_queue_depth=2,
        alert_check_every=0.05,
        **WEBHOOK_MODE,
    )
    for index in range(3):  # no worker takes them: they wait in arq's queue
        await post_image(app, f"waiting {index}", telegram_id=USER + index)
    admin = Chat(telegram, user_id=ADMIN_ID)
    await admin.reply("The queue is backing up: jobs waiting: 3 (alert above 2)")
    client = aioredis.from_url(redis_url)
    await client.flushdb()  # the queue is emptied (as workers would)
    await client.aclose()
    await admin.reply("The queue is back to normal: jobs waiting: 0")
    assert len(told(telegram, ADMIN_ID, "The queue is backing up")) == 1


async def test_two_processes_racing_for_one_alert_send_it_once(
    make_app: AppFactory, telegram: FakeTelegram, database_url: str
) -> None:
    apps = [await make_app(database_url=database_url, **WEBHOOK_MODE) for _ in range(2)]
    notice = Notice("alert_queue_depth", {"depth": 900, "threshold": 500})
    raced = [
        Alerts(app.services).raise_alert("queue_depth", notice)
        for app in apps
        if app.services
        for _ in range(4)
    ]
    assert sorted(await asyncio.gather(*raced)) == [False] * 7 + [True]
    assert len(told(telegram, ADMIN_ID, "The queue is backing up: jobs waiting: 900")) == 1

    cleared = Notice("alert_queue_depth_cleared", {"depth": 3})
    raced = [
        Alerts(app.services).clear_alert("queue_depth", cleared)
        for app in apps
        if app.services
        for _ in range(4)
    ]
    assert sorted(await asyncio.gather(*raced)) == [False] * 7 + [True]
    assert len(told(telegram, ADMIN_ID, "The queue is back to normal")) == 1
