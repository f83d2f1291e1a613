"""bot/telegram/session.py: a request with a small in-memory file goes out as one body of known length,
a large one streams as aiogram sends it, and either way the Bot API gets the same fields and bytes
(a loopback aiohttp server stands in for Telegram)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiogram import Bot
from aiogram.client.telegram import TelegramAPIServer
from aiogram.exceptions import TelegramNetworkError
from aiogram.types import BufferedInputFile, InlineKeyboardButton, InlineKeyboardMarkup
from aiohttp import BodyPartReader, web
from aiohttp.test_utils import TestServer

from bot.telegram.session import ONE_PIECE_UP_TO, TelegramSession
from tests.conftest import closed_port

TOKEN = "42:secret-token"


@pytest.fixture
async def telegram() -> AsyncIterator[tuple[TestServer, list[dict[str, Any]]]]:
    received: list[dict[str, Any]] = []

    async def method(request: web.Request) -> web.Response:
        seen: dict[str, Any] = {
            "method": request.match_info["method"],
            "content_length": request.headers.get("Content-Length"),
            "chunked": "chunked" in request.headers.get("Transfer-Encoding", ""),
            "fields": {},
            "files": {},
        }
        if request.content_type == "multipart/form-data":
            async for part in await request.multipart():
                assert isinstance(part, BodyPartReader)
                content = await part.read()
                if part.filename:
                    seen["files"][part.name] = (part.filename, bytes(content))
                else:
                    seen["fields"][part.name] = content.decode()
        elif request.content_type == "application/json":
            seen["json"] = await request.json()
        else:
            seen["fields"] = dict(await request.post())
        received.append(seen)
        message = {"message_id": len(received), "date": 0, "chat": {"id": 5, "type": "private"}}
        return web.json_response({"ok": True, "result": message})

    app = web.Application(client_max_size=8 * ONE_PIECE_UP_TO)
    app.router.add_post("/bot{token}/{method}", method)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield server, received
    finally:
        await server.close()


@pytest.fixture
async def bot(telegram: tuple[TestServer, list[dict[str, Any]]]) -> AsyncIterator[Bot]:
    server, _ = telegram
    session = TelegramSession(api=TelegramAPIServer.from_base(str(server.make_url("")).rstrip("/")))
    async with Bot(TOKEN, session=session) as opened:
        yield opened


async def test_a_small_photo_goes_as_one_body_of_known_length(
    bot: Bot, telegram: tuple[TestServer, list[dict[str, Any]]]
) -> None:
    _, received = telegram
    photo = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40
    message = await bot.send_photo(5, BufferedInputFile(photo, "result.png"), caption="Your photo ✨")
    assert message.message_id == 1
    [request] = received
    assert request["method"] == "sendPhoto"
    assert not request["chunked"] and int(request["content_length"]) > len(photo)
    assert request["fields"]["chat_id"] == "5"
    assert request["fields"]["caption"] == "Your photo ✨"
    assert request["files"] == {request["fields"]["photo"].removeprefix("attach://"): ("result.png", photo)}


async def test_a_file_over_the_bound_streams_and_arrives_whole(
    bot: Bot, telegram: tuple[TestServer, list[dict[str, Any]]]
) -> None:
    _, received = telegram
    video = bytes(range(256)) * (ONE_PIECE_UP_TO // 256 + 1)
    await bot.send_video(5, BufferedInputFile(video, "result.mp4"))
    [request] = received
    assert request["chunked"]  # not copied into one more body of its size
    [(filename, content)] = request["files"].values()
    assert (filename, content) == ("result.mp4", video)


async def test_a_message_without_files_goes_as_json_with_its_keyboard_as_an_object(
    bot: Bot, telegram: tuple[TestServer, list[dict[str, Any]]]
) -> None:
    _, received = telegram
    await bot.send_message(5, "Charged 1 ⭐. Balance: 9 ⭐")
    keyboard = InlineKeyboardMarkup(
        inline_keyboard=[[InlineKeyboardButton(text="✖ Cancel", callback_data="cancel:g1")]]
    )
    await bot.edit_message_text("⏳ Working", chat_id=5, message_id=1, reply_markup=keyboard)
    await bot.send_message(5, "no preview", disable_notification=False, parse_mode=None)
    message, edit, unset = received
    assert message["method"] == "sendMessage" and not message["chunked"]
    assert message["json"] == {"chat_id": 5, "text": "Charged 1 ⭐. Balance: 9 ⭐"}
    assert edit["json"] == {
        "chat_id": 5,
        "message_id": 1,
        "text": "⏳ Working",
        "reply_markup": {"inline_keyboard": [[{"text": "✖ Cancel", "callback_data": "cancel:g1"}]]},
    }
    assert unset["json"] == {"chat_id": 5, "text": "no preview", "disable_notification": False}


async def test_an_unreachable_api_is_aiograms_network_error() -> None:
    session = TelegramSession(api=TelegramAPIServer.from_base(f"http://127.0.0.1:{closed_port()}"))
    async with Bot(TOKEN, session=session) as bot:
        with pytest.raises(TelegramNetworkError):
            await bot.send_photo(5, BufferedInputFile(b"png", "a.png"))
