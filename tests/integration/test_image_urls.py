"""Images sent as their URLs (bot/telegram/delivery.py, `send_image_urls`), against the fake Telegram,
which fetches loopback URLs as Telegram fetches them: a URL Telegram refuses is fetched here and
uploaded, and the bot then uploads that host's images for a while; a refusal that was the chat's
(the upload refused too) changes nothing for the next images."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiogram import Bot
from aiogram.client.telegram import TelegramAPIServer
from aiohttp import web

from bot.telegram.delivery import UPLOADS_AFTER_URL_REFUSED, TelegramDelivery
from bot.telegram.session import TelegramSession
from generation.delivery import DeliveryRefused
from tests.constants import BOT_TOKEN
from tests.fakes.telegram import FakeTelegram

PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 64


@pytest.fixture
async def images() -> AsyncIterator[str]:
    """A loopback host serving /ok.png (an image) and /page.png (an HTML page)."""

    async def image(request: web.Request) -> web.Response:
        if request.match_info["name"] == "page":
            return web.Response(text="<html></html>", content_type="text/html")
        return web.Response(body=PNG, content_type="image/png")

    app = web.Application()
    app.router.add_get("/{name}.png", image)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    await runner.cleanup()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def delivery(telegram: FakeTelegram) -> AsyncIterator[tuple[TelegramDelivery, Clock]]:
    session = TelegramSession(api=TelegramAPIServer.from_base(telegram.url))
    clock = Clock()
    yield TelegramDelivery({"image_bot": Bot(BOT_TOKEN, session=session)}, clock=clock), clock
    await session.close()


def fetcher(fetched: list[str]) -> Callable[[str], Awaitable[bytes]]:
    """The fetch of the fallback: records each URL it is asked for."""

    async def fetch(url: str) -> bytes:
        fetched.append(url)
        return PNG

    return fetch


async def test_telegram_fetches_the_urls_and_nothing_is_fetched_here(
    delivery: tuple[TelegramDelivery, Clock], telegram: FakeTelegram, images: str
) -> None:
    sender, _ = delivery
    fetched: list[str] = []
    ids = await sender.send_image_urls("image_bot", 7, [f"{images}/ok.png"], fetcher(fetched))
    [call] = telegram.sent(BOT_TOKEN, methods=["sendPhoto"])
    assert ids == [call.result["message_id"]]
    assert call.params["photo"] == f"{images}/ok.png" and call.upload("photo") == PNG
    assert fetched == []


async def test_a_refused_url_is_uploaded_and_the_host_uploaded_until_the_pause_ends(
    delivery: tuple[TelegramDelivery, Clock], telegram: FakeTelegram, images: str
) -> None:
    sender, clock = delivery
    fetched: list[str] = []
    page = f"{images}/page.png"  # not an image: Telegram will not take it as a photo by URL
    await sender.send_image_urls("image_bot", 7, [page, f"{images}/ok.png"], fetcher(fetched))
    refused, uploaded = telegram.sent(BOT_TOKEN, methods=["sendMediaGroup"], include_failed=True)
    assert refused.error is not None and "wrong type of the web page content" in refused.error["description"]
    assert uploaded.ok and len(uploaded.files) == 2
    assert fetched == [page, f"{images}/ok.png"]

    # The same host a while later: uploaded at once. Past the pause: by URL again.
    clock.now += UPLOADS_AFTER_URL_REFUSED - 1
    await sender.send_image_urls("image_bot", 7, [f"{images}/ok.png"], fetcher(fetched))
    assert telegram.sent(BOT_TOKEN, methods=["sendPhoto"])[-1].files
    clock.now += 2
    await sender.send_image_urls("image_bot", 7, [f"{images}/ok.png"], fetcher(fetched))
    last = telegram.sent(BOT_TOKEN, methods=["sendPhoto"])[-1]
    assert last.params["photo"] == f"{images}/ok.png" and not last.files


async def test_a_chat_that_refuses_both_leaves_the_next_images_by_url(
    delivery: tuple[TelegramDelivery, Clock], telegram: FakeTelegram, images: str
) -> None:
    sender, _ = delivery
    telegram.fail_next("sendPhoto", error_code=400, description="Bad Request: chat not found", times=2)
    with pytest.raises(DeliveryRefused, match="chat not found"):
        await sender.send_image_urls("image_bot", 7, [f"{images}/ok.png"], fetcher([]))
    await sender.send_image_urls("image_bot", 8, [f"{images}/ok.png"], fetcher([]))
    last = telegram.sent(BOT_TOKEN, methods=["sendPhoto"])[-1]
    assert last.params["photo"] == f"{images}/ok.png" and not last.files
