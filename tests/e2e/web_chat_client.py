"""A browser's side of the web chat, over HTTP: its own cookie jar (its own user), what it sends, and
the chat as the page would show it, read from the events after a cursor."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import aiohttp

from app import App

JSON = dict[str, Any]


class WebChatClient:
    def __init__(self, app: App) -> None:
        self.base = f"http://127.0.0.1:{app.http_port}"
        # unsafe: the server is an IP address, whose cookies aiohttp's jar refuses by default.
        self.http = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
        self.cursor = 0
        self.messages: dict[int, JSON] = {}
        self.events: list[JSON] = []

    async def __aenter__(self) -> WebChatClient:
        async with self.http.get(f"{self.base}/chat") as page:
            assert page.status == 200
            assert '<main id="messages"' in await page.text()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.http.close()

    async def send(self, text: str) -> None:
        async with self.http.post(f"{self.base}/chat/api/send", json={"text": text}) as answer:
            assert answer.status == 200, await answer.text()

    async def upload(self, content: bytes, content_type: str, filename: str, caption: str = "") -> None:
        form = aiohttp.FormData()
        form.add_field("text", caption)
        form.add_field("file", content, content_type=content_type, filename=filename)
        async with self.http.post(f"{self.base}/chat/api/send", data=form) as answer:
            assert answer.status == 200, await answer.text()

    async def press(self, message: JSON, data: str) -> int:
        payload = {"message_id": message["message_id"], "data": data}
        async with self.http.post(f"{self.base}/chat/api/press", json=payload) as answer:
            return answer.status

    async def media(self, file_id: str) -> tuple[int, bytes]:
        async with self.http.get(f"{self.base}/chat/api/media/{file_id}") as answer:
            return answer.status, await answer.read()

    async def read_events(self, wait: float = 1.0) -> list[JSON]:
        url = f"{self.base}/chat/api/events?after={self.cursor}&wait={wait}"
        async with self.http.get(url) as answer:
            assert answer.status == 200
            found: list[JSON] = (await answer.json())["events"]
        for event in found:
            self.cursor = max(self.cursor, event["cursor"])
            if event["type"] in {"message", "edit"}:
                self.messages[event["message"]["message_id"]] = event["message"]
            elif event["type"] == "delete":
                self.messages.pop(event["message_id"], None)
        self.events += found
        return found

    async def wait_for(self, found: Callable[[JSON], bool], timeout: float = 15.0) -> JSON:
        """The first bot message shown now (new or as edited) for which `found` is true."""
        async with asyncio.timeout(timeout):
            while True:
                for message in self.messages.values():
                    if message["from"]["is_bot"] and found(message):
                        return message
                await self.read_events()

    async def gone(self, message: JSON, timeout: float = 15.0) -> None:
        async with asyncio.timeout(timeout):
            while message["message_id"] in self.messages:
                await self.read_events()

    async def reply(self, containing: str, timeout: float = 15.0) -> JSON:
        return await self.wait_for(lambda message: containing in (message.get("text") or ""), timeout)


def buttons(message: JSON) -> list[str]:
    return [
        button["callback_data"]
        for row in message.get("reply_markup", {}).get("inline_keyboard", [])
        for button in row
    ]
