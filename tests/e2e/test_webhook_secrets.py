"""Telegram webhooks, one secret per bot; /healthz, details only for the API token.

Each bot's webhook is registered with a secret of its own, derived from WEBHOOK_SECRET: a secret one
bot's token holder can read (getWebhookInfo does not show it, but the bot's traffic does) opens no
other bot. Every refusal looks the same, so the answers do not list which bot names exist."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

import aiohttp
import pytest

from app import App
from bot.http.secrets import same_secret, telegram_webhook_secret
from tests.conftest import API_TOKEN, OTHER_BOT_TOKEN, AppFactory
from tests.e2e.helpers import Chat, generations_of
from tests.fakes.telegram import FakeTelegram

WEBHOOK_SECRET = "one-setting-for-every-bot"
HEADER = "X-Telegram-Bot-Api-Secret-Token"
# What Telegram accepts as a webhook's secret_token.
TELEGRAM_SECRET_FORMAT = re.compile(r"[A-Za-z0-9_-]{1,256}")


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def webhook_app(make_app: AppFactory) -> App:
    return await make_app(
        bot_mode="webhook", webhook_base_url="https://bots.example.com", webhook_secret=WEBHOOK_SECRET
    )


def webhook_url(app: App, bot_name: str) -> str:
    return f"http://127.0.0.1:{app.http_port}/webhooks/telegram/{bot_name}"


async def post(
    http: aiohttp.ClientSession, url: str, update: object, secret: str | None
) -> tuple[int, bytes]:
    headers = {} if secret is None else {HEADER: secret}
    async with http.post(url, json=update, headers=headers) as response:
        return response.status, await response.read()


async def post_raw_header(app: App, bot_name: str, header_value: bytes) -> tuple[int, bytes]:
    """A request whose secret header is bytes no client library would send (not UTF-8)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", app.http_port)
    body = b'{"update_id": 1}'
    writer.write(
        f"POST /webhooks/telegram/{bot_name} HTTP/1.1\r\nHost: bots\r\n".encode()
        + HEADER.encode()
        + b": "
        + header_value
        + f"\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n".encode()
        + b"Connection: close\r\n\r\n"
        + body
    )
    await writer.drain()
    answer = await reader.read()
    writer.close()
    head, _, content = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), content


async def test_each_bot_is_registered_with_its_own_secret_and_only_that_one_opens_it(
    make_app: AppFactory, telegram: FakeTelegram, http: aiohttp.ClientSession
) -> None:
    app = await webhook_app(make_app)
    chat = Chat(telegram)
    registered = {
        name: (telegram.webhook_of(token) or {})["secret_token"]
        for name, token in (("image_bot", chat.token), ("other_bot", OTHER_BOT_TOKEN))
    }
    for name, secret in registered.items():
        assert secret == telegram_webhook_secret(WEBHOOK_SECRET, name)
        assert TELEGRAM_SECRET_FORMAT.fullmatch(secret)
        assert WEBHOOK_SECRET not in secret
    assert registered["image_bot"] != registered["other_bot"]

    update = chat.send("/start")
    url = webhook_url(app, "image_bot")
    assert (await post(http, url, update, WEBHOOK_SECRET))[0] == 401  # the setting itself opens nothing
    assert (await post(http, url, update, registered["other_bot"]))[0] == 401  # nor another bot's
    assert (await post(http, url, update, registered["image_bot"]))[0] == 200
    await chat.reply("Your balance: 10 ⭐")


async def test_every_refusal_gets_the_same_answer_and_a_header_of_any_bytes_is_no_error(
    make_app: AppFactory, telegram: FakeTelegram, http: aiohttp.ClientSession
) -> None:
    app = await webhook_app(make_app)
    update = Chat(telegram).send("/image should never be made")
    own = telegram_webhook_secret(WEBHOOK_SECRET, "image_bot")
    ghost = webhook_url(app, "ghost")
    refusals = {
        "unknown bot, a known bot's secret": await post(http, ghost, update, own),
        # The secret derived for the unknown name passes the comparison: the missing bot still refuses.
        "unknown bot, its would-be secret": await post(
            http, ghost, update, telegram_webhook_secret(WEBHOOK_SECRET, "ghost")
        ),
        "no secret": await post(http, webhook_url(app, "image_bot"), update, None),
        "wrong secret": await post(http, webhook_url(app, "image_bot"), update, own[:-1] + "x"),
        "non-ASCII secret": await post(http, webhook_url(app, "image_bot"), update, "сек" + own),
        "bytes that are not UTF-8": await post_raw_header(app, "image_bot", b"\xff\xfe" + own.encode()),
        "unknown bot, no secret": await post(http, ghost, update, None),
    }
    assert set(refusals.values()) == {(401, b'{"error": "unauthorized"}')}, refusals
    assert await generations_of(app) == []


async def test_without_a_webhook_secret_no_update_is_taken(
    make_app: AppFactory, telegram: FakeTelegram, http: aiohttp.ClientSession
) -> None:
    """Polling mode, WEBHOOK_SECRET unset: the route refuses everything, a secret derived from an
    empty setting included (anyone could compute that one)."""
    app = await make_app()
    update = Chat(telegram).send("/image through the back door")
    url = webhook_url(app, "image_bot")
    for secret in (None, "", telegram_webhook_secret("", "image_bot")):
        assert await post(http, url, update, secret) == (401, b'{"error": "unauthorized"}')


def test_secrets_compare_as_bytes() -> None:
    assert same_secret("abc", "abc")
    assert not same_secret("abd", "abc")
    assert not same_secret("ключ", "abc")  # str compare_digest would raise on non-ASCII
    assert not same_secret("\udcff", "abc")  # an undecodable header byte, as aiohttp hands it over


async def test_health_tells_the_public_only_whether_it_serves(
    make_app: AppFactory, http: aiohttp.ClientSession
) -> None:
    app = await make_app()
    url = f"http://127.0.0.1:{app.http_port}/healthz"
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {API_TOKEN}"}):
        async with http.get(url, headers=headers) as response:
            assert (response.status, await response.json()) == (200, {"status": "ok"})
    async with http.get(url, headers={"Authorization": f"Bearer {API_TOKEN}"}) as response:
        details = await response.json()
    assert response.status == 200
    assert details["status"] == "ok" and details["database"] is True and details["plan"] == "B"
    assert {"redis", "mode", "mode_source", "breaker"} <= details.keys()


@pytest.mark.parametrize("api_token", [None, ""])
async def test_health_without_an_api_token_configured_shows_no_details(
    make_app: AppFactory, http: aiohttp.ClientSession, api_token: str | None
) -> None:
    app = await make_app(api_token=api_token)
    for authorization in ("Bearer ", "Bearer", "bearer  "):
        async with http.get(
            f"http://127.0.0.1:{app.http_port}/healthz", headers={"Authorization": authorization}
        ) as response:
            assert (response.status, await response.json()) == (200, {"status": "ok"})
