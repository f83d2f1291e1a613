"""The web chat's HTTP side, under /chat: the page, and the API it talks to. What a browser sends
becomes an aiogram update fed to the same dispatcher as Telegram's; what the bot sends is read back
as events after a cursor (a long poll)."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from pathlib import Path
from typing import Any

from aiogram.types import Update
from aiohttp import BodyPartReader, web
from loguru import logger

from bot.http.keys import BOT_DISPATCHER, SERVICES, UPDATES_IN_FLIGHT
from bot.http.responses import json_error
from bot.web_chat.chat import WebChat
from bot.web_chat.identity import Identities
from settings import Settings

WEB_CHAT = web.AppKey("web_chat", WebChat)
IDENTITIES = web.AppKey("web_chat_identities", Identities)
# The routes that take work: refused while the process drains (bot/http/health.py).
TAKING_WORK = frozenset({"/chat/api/send", "/chat/api/press"})
# An upload's limit (a photo to animate, a recording to clone): Telegram's bots may download 20 MB.
UPLOAD_LIMIT = 20 * 1024 * 1024
TEXT_LIMIT = 4096
# Seconds a read of the events waits for one before answering none.
LONG_POLL = 25.0
STATIC = Path(__file__).parent / "static"
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; "
        "media-src 'self' blob:; connect-src 'self'; form-action 'none'; frame-ancestors 'none'; "
        "base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def setup_web_chat(app: web.Application, web_chat: WebChat) -> None:
    app[WEB_CHAT] = web_chat
    app[IDENTITIES] = Identities(_cookie_key(app[SERVICES].settings))
    app.router.add_get("/chat", page)
    app.router.add_get("/chat/static/{name}", static_file)
    app.router.add_post("/chat/api/send", send)
    app.router.add_post("/chat/api/press", press)
    app.router.add_get("/chat/api/events", events)
    app.router.add_get("/chat/api/media/{file_id}", media)


def _cookie_key(settings: Settings) -> bytes:
    """Cookies outlive a restart when a server secret is set (each browser keeps its user and its
    balance); without one, a random key for this process."""
    for secret in (settings.webhook_secret, settings.api_token, settings.dashboard_password):
        if secret is not None and secret.get_secret_value():
            return hmac.new(
                secret.get_secret_value().encode(), b"aibot web chat cookies", hashlib.sha256
            ).digest()
    return secrets.token_bytes(32)


async def page(request: web.Request) -> web.Response:
    response = web.FileResponse(STATIC / "chat.html", headers=PAGE_HEADERS)
    if request.app[IDENTITIES].user_id(request) is None:
        request.app[IDENTITIES].issue(request, response)
    return response  # type: ignore[return-value]


async def static_file(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    if name not in {"chat.js", "chat.css"}:
        raise web.HTTPNotFound()
    return web.FileResponse(STATIC / name, headers={"X-Content-Type-Options": "nosniff"})


def _user(request: web.Request) -> dict[str, Any]:
    user_id = request.app[IDENTITIES].user_id(request)
    if user_id is None:
        raise web.HTTPUnauthorized(text="open /chat first: it gives this browser its user")
    # The browser's language picks the bot's (as Telegram's language_code does, at the first message).
    language = request.headers.get("Accept-Language", "en").split(",")[0].split("-")[0].strip().lower()
    return {"id": user_id, "is_bot": False, "first_name": "You", "language_code": language or "en"}


async def send(request: web.Request) -> web.Response:
    """A message typed (JSON {"text"}) or a file sent (multipart: "file", and "text" as its caption)."""
    user = _user(request)
    web_chat = request.app[WEB_CHAT]
    if request.content_type.startswith("multipart/"):
        text, upload = await _read_upload(request)
        update = await web_chat.user_message(user, text=text or None, upload=upload)
    else:
        body = await request.json()
        typed = body.get("text") if isinstance(body, dict) else None
        if not isinstance(typed, str) or not typed.strip() or len(typed) > TEXT_LIMIT:
            return json_error(400, f"send a text of 1 to {TEXT_LIMIT} characters")
        update = await web_chat.user_message(user, text=typed.strip())
    return await _handle(request, update)


async def press(request: web.Request) -> web.Response:
    user = _user(request)
    body = await request.json()
    message_id, data = (body.get("message_id"), body.get("data")) if isinstance(body, dict) else (None, None)
    if not isinstance(message_id, int) or not isinstance(data, str):
        return json_error(400, "send the message_id and the button's data")
    update = request.app[WEB_CHAT].button_press(user, message_id, data)
    if update is None:
        return json_error(404, "no such button in this chat")
    return await _handle(request, update)


async def _handle(request: web.Request, update: Update) -> web.Response:
    """Handled before the answer, as a Telegram webhook's update is: when the page hears back, what
    the routers answered is in the chat."""
    if BOT_DISPATCHER not in request.app:
        return json_error(503, "the bot is not running")
    in_flight = request.app[UPDATES_IN_FLIGHT]
    if not in_flight.try_enter():
        return json_error(503, "too many messages at once: try again shortly")
    try:
        await request.app[BOT_DISPATCHER].feed_update(request.app[WEB_CHAT].bot, update)
    except Exception:
        logger.exception("web chat update {} failed in its handler", update.update_id)
        return json_error(500, "the bot could not answer that")
    finally:
        in_flight.leave()
    return web.json_response({"ok": True})


async def _read_upload(request: web.Request) -> tuple[str, tuple[bytes, str, str]]:
    """Read part by part, with a limit of its own (the app's body limit is for JSON)."""
    text, upload = "", None
    reader = await request.multipart()
    while (part := await reader.next()) is not None:
        if not isinstance(part, BodyPartReader):
            raise web.HTTPBadRequest(text="nested multipart is not taken")
        if part.name == "text":
            text = (await part.text())[:TEXT_LIMIT].strip()
        elif part.name == "file":
            content = bytearray()
            while chunk := await part.read_chunk():
                content += chunk
                if len(content) > UPLOAD_LIMIT:
                    raise web.HTTPRequestEntityTooLarge(max_size=UPLOAD_LIMIT, actual_size=len(content))
            content_type = part.headers.get("Content-Type", "application/octet-stream").split(";")[0]
            upload = (bytes(content), content_type.strip().lower(), part.filename or "file")
    if upload is None or not upload[0]:
        raise web.HTTPBadRequest(text="no file in the upload")
    return text, upload


async def events(request: web.Request) -> web.Response:
    """The chat's events after `after` (0: all still kept), waiting up to `wait` seconds for one."""
    user = _user(request)
    try:
        after = int(request.query.get("after", "0"))
        wait = min(max(float(request.query.get("wait", "0")), 0.0), LONG_POLL)
    except ValueError:
        return json_error(400, "after is a number, wait a number of seconds")
    found = await request.app[WEB_CHAT].store.events_after(int(user["id"]), after, wait)
    return web.json_response({"events": found}, headers={"Cache-Control": "no-store"})


async def media(request: web.Request) -> web.Response:
    stored = request.app[WEB_CHAT].store.file(request.match_info["file_id"])
    if stored is None:
        raise web.HTTPNotFound()
    return web.Response(
        body=stored.content,
        content_type=stored.content_type,
        headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "private, max-age=3600"},
    )
