"""An aiogram session that answers the Bot API in memory for the web chat's bot: what the routers and
the deliveries send is kept in the chat store (and so reaches the page); nothing goes on the network.
Its answers are the Bot API's own (parsed by aiogram as any answer from Telegram), so a handler or a
delivery cannot tell this bot from a Telegram one, errors included."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncGenerator
from http import HTTPStatus
from typing import Any

from aiogram import Bot
from aiogram.client.session.base import BaseSession
from aiogram.methods import TelegramMethod
from aiogram.methods.base import TelegramType
from aiogram.types import InputFile

from bot.web_chat.store import JSON, ChatStore

WEB_BOT_ID = 1
WEB_BOT_USERNAME = "web_chat_bot"
# Shown where Telegram would show an invoice: stars are paid in Telegram only.
TOP_UP_IN_TELEGRAM = "Top-ups are paid with Telegram Stars: open this bot in Telegram to pay."
# The methods that only change what Telegram shows around the chat, or how updates arrive.
_NO_OPS = {"setMyCommands", "deleteWebhook", "setWebhook", "sendChatAction", "deleteMyCommands"}
_MEDIA_METHODS = {
    "sendPhoto": "photo",
    "sendVideo": "video",
    "sendVoice": "voice",
    "sendAudio": "audio",
    "sendDocument": "document",
}
_CONTENT_TYPES = {"photo": "image/jpeg", "video": "video/mp4", "voice": "audio/ogg", "audio": "audio/mpeg"}


class _ApiError(Exception):
    def __init__(self, status: int, description: str) -> None:
        super().__init__(description)
        self.status = status
        self.description = description


class WebChatSession(BaseSession):
    def __init__(self, store: ChatStore) -> None:
        super().__init__()
        self.store = store

    async def close(self) -> None:
        """Nothing opened: no connection to close."""

    async def make_request(
        self, bot: Bot, method: TelegramMethod[TelegramType], timeout: int | None = None
    ) -> TelegramType:
        files: dict[str, InputFile] = {}
        params = {
            name: self.prepare_value(value, bot=bot, files=files, _dumps_json=False)
            for name, value in method.model_dump(warnings=False).items()
        }
        params = {name: value for name, value in params.items() if value is not None}
        try:
            result = await self._answer(bot, method.__api_method__, params, files)
            status, body = HTTPStatus.OK, {"ok": True, "result": result}
        except _ApiError as error:
            status = HTTPStatus(error.status)
            body = {"ok": False, "error_code": error.status, "description": error.description}
        response = self.check_response(bot, method, status, json.dumps(body))
        return response.result  # type: ignore[return-value]

    async def stream_content(
        self,
        url: str,
        headers: dict[str, Any] | None = None,
        timeout: int = 30,
        chunk_size: int = 65536,
        raise_for_status: bool = True,
    ) -> AsyncGenerator[bytes, None]:
        """A file the page uploaded (or the bot sent), by the path GetFile answered: its last part is
        the file's id."""
        stored = self.store.file(url.rsplit("/", 1)[-1])
        if stored is None:
            if raise_for_status:
                raise FileNotFoundError(url)
            return
        for start in range(0, len(stored.content), chunk_size):
            yield stored.content[start : start + chunk_size]

    async def _answer(self, bot: Bot, name: str, params: JSON, files: dict[str, InputFile]) -> Any:
        if name in _NO_OPS:
            return True
        if name == "getMe":
            return {"id": WEB_BOT_ID, "is_bot": True, "first_name": "AI bot", "username": WEB_BOT_USERNAME}
        if name == "getStarTransactions":
            return {"transactions": []}  # no payments are made here: nothing to reconcile
        if name == "getFile":
            return self._file(str(params["file_id"]))
        if name == "answerCallbackQuery":
            text = params.get("text")
            chat_id = self.store.callbacks.pop(str(params["callback_query_id"]), None)
            if text and chat_id is not None:
                await self.store.notice(chat_id, str(text))
            return True
        chat_id = _chat_id(params)
        if name == "sendMessage":
            return await self._send(chat_id, {"text": params["text"]}, params)
        if name == "sendInvoice":
            text = f"{params['title']}\n{params['description']}\n\n{TOP_UP_IN_TELEGRAM}"
            return await self._send(chat_id, {"text": text}, {})
        if name in _MEDIA_METHODS:
            kind = _MEDIA_METHODS[name]
            media = await self._media(bot, kind, params[kind], files)
            return await self._send(chat_id, media, params)
        if name == "sendMediaGroup":
            album = []
            for item in params["media"]:
                kind = str(item["type"])
                album.append(
                    await self._send(chat_id, await self._media(bot, kind, item["media"], files), item)
                )
            return album
        if name in {"editMessageText", "editMessageReplyMarkup", "editMessageCaption"}:
            return await self._edit(chat_id, name, params)
        if name == "deleteMessage":
            if not await self.store.delete_message(chat_id, int(params["message_id"])):
                raise _ApiError(400, "Bad Request: message to delete not found")
            return True
        raise _ApiError(400, f"Bad Request: the web chat does not do {name}")

    async def _send(self, chat_id: int, content: JSON, params: JSON) -> JSON:
        message: JSON = {
            "message_id": self.store.next_message_id(),
            "date": int(time.time()),
            "chat": {"id": chat_id, "type": "private"},
            "from": {"id": WEB_BOT_ID, "is_bot": True, "first_name": "AI bot", "username": WEB_BOT_USERNAME},
            **content,
        }
        if params.get("caption"):
            message["caption"] = params["caption"]
        if params.get("reply_markup"):
            message["reply_markup"] = params["reply_markup"]
        await self.store.add_message(chat_id, message)
        return message

    async def _edit(self, chat_id: int, name: str, params: JSON) -> JSON:
        old = self.store.message(chat_id, int(params["message_id"]))
        if old is None:
            raise _ApiError(400, "Bad Request: message to edit not found")
        new = {key: value for key, value in old.items() if key != "reply_markup"}
        if name == "editMessageText":
            new["text"] = params["text"]
        elif name == "editMessageCaption":
            new["caption"] = params.get("caption", "")
        if params.get("reply_markup"):
            new["reply_markup"] = params["reply_markup"]
        if new == old:
            # Telegram's answer to an edit that changes nothing; deliveries count on it.
            raise _ApiError(400, "Bad Request: message is not modified")
        new["edit_date"] = int(time.time())
        await self.store.edit_message(chat_id, new)
        return new

    async def _media(self, bot: Bot, kind: str, value: Any, files: dict[str, InputFile]) -> JSON:
        """The message field of a photo, video, voice, audio or document: an upload is stored; a file
        id (one this chat knows) is sent again as it is."""
        if isinstance(value, str) and value.startswith("attach://"):
            upload = files[value.removeprefix("attach://")]
            content = b"".join([chunk async for chunk in upload.read(bot)])
            filename = upload.filename or kind
            content_type = _CONTENT_TYPES.get(kind, "application/octet-stream")
            file_id = self.store.add_file(content, content_type, filename)
        else:
            file_id = str(value)
            stored = self.store.file(file_id)
            if stored is None:
                raise _ApiError(400, "Bad Request: wrong file identifier")
            content, filename = stored.content, stored.filename
        described: JSON = {"file_id": file_id, "file_unique_id": file_id, "file_size": len(content)}
        if kind == "photo":
            return {"photo": [{**described, "width": 0, "height": 0}]}
        if kind == "video":
            return {"video": {**described, "width": 0, "height": 0, "duration": 0}}
        if kind in {"voice", "audio"}:
            return {kind: {**described, "duration": 0}}
        return {"document": {**described, "file_name": filename}}

    def _file(self, file_id: str) -> JSON:
        stored = self.store.file(file_id)
        if stored is None:
            raise _ApiError(400, "Bad Request: invalid file_id")
        return {
            "file_id": file_id,
            "file_unique_id": file_id,
            "file_size": len(stored.content),
            "file_path": f"web/{file_id}",
        }


def _chat_id(params: JSON) -> int:
    try:
        return int(params["chat_id"])
    except (KeyError, TypeError, ValueError):
        raise _ApiError(400, "Bad Request: chat not found") from None
