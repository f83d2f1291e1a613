"""A user's file fetched through the bot: when Telegram's file server answers an error, the error that
goes on names the status only. aiohttp's own error quotes the file URL, which carries the bot token."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiogram import Bot
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiohttp import web

from bot.telegram.delivery import TelegramDelivery
from generation.delivery import DeliveryRefused, DeliveryRetryLater

TOKEN = "6012345678:AAFile-server-secret-0123456789abcdef"


@pytest.fixture
async def file_server_base() -> AsyncIterator[str]:
    """A Bot API server whose getFile answers a path, and whose file server answers the status the
    path names (photos/404.jpg: 404)."""

    async def get_file(request: web.Request) -> web.Response:
        file_id = str((await request.post()).get("file_id", ""))
        result = {"file_id": file_id, "file_unique_id": "u", "file_path": f"photos/{file_id}.jpg"}
        return web.json_response({"ok": True, "result": result})

    async def file(request: web.Request) -> web.Response:
        status = int(request.match_info["path"].removeprefix("photos/").removesuffix(".jpg"))
        return web.Response(status=status, text="no")

    app = web.Application()
    app.router.add_post("/bot{token}/getFile", get_file)
    app.router.add_get("/file/bot{token}/{path:.+}", file)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


@pytest.mark.parametrize(
    ("status", "error_class"), [(404, DeliveryRefused), (403, DeliveryRefused), (502, DeliveryRetryLater)]
)
async def test_a_file_server_error_is_mapped_without_the_file_url(
    file_server_base: str, status: int, error_class: type[Exception]
) -> None:
    session = AiohttpSession(api=TelegramAPIServer.from_base(file_server_base))
    bot = Bot(TOKEN, session=session)
    try:
        with pytest.raises(error_class) as raised:
            await TelegramDelivery({"main": bot}).download_file("main", str(status))
    finally:
        await session.close()
    assert str(status) in str(raised.value)
    assert TOKEN.split(":")[1] not in str(raised.value) and raised.value.__cause__ is None
