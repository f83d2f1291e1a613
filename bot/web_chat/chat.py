"""The web chat's bot: an aiogram Bot like the Telegram ones (registered with them under its own name,
so the routers answer it and the deliveries reach it), whose session keeps what it sends in memory."""

from __future__ import annotations

import io
import time
from typing import Any

from aiogram import Bot
from aiogram.client.default import DefaultBotProperties
from aiogram.types import Update
from PIL import Image, UnidentifiedImageError

from bot.web_chat.session import WEB_BOT_ID, WebChatSession
from bot.web_chat.store import JSON, ChatStore
from settings import WEB_CHAT_BOT_NAME

WEB_BOT_NAME = WEB_CHAT_BOT_NAME
# Never sent anywhere: aiogram wants a token of this shape, and takes the bot's id from it.
WEB_BOT_TOKEN = f"{WEB_BOT_ID}:webchat-local"


class WebChat:
    def __init__(self) -> None:
        self.store = ChatStore()
        self.session = WebChatSession(self.store)
        self.bot = Bot(WEB_BOT_TOKEN, session=self.session, default=DefaultBotProperties(parse_mode=None))

    async def user_message(
        self, user: JSON, text: str | None = None, upload: tuple[bytes, str, str] | None = None
    ) -> Update:
        """The browser's message as Telegram would deliver it (shown in the chat first, as the user's
        own message is). `upload`: content, content type, file name; an image is a photo, audio a
        voice message, anything else a document."""
        chat_id = int(user["id"])
        message: JSON = {
            "message_id": self.store.next_message_id(),
            "date": int(time.time()),
            "chat": {"id": chat_id, "type": "private", "first_name": user["first_name"]},
            "from": user,
        }
        if upload is not None:
            message.update(self._attachment(*upload))
            if text:
                message["caption"] = text
                message.update(_commands("caption_entities", text))
        elif text is not None:
            message["text"] = text
            message.update(_commands("entities", text))
        await self.store.add_message(chat_id, message)
        return self._update({"message": message})

    def button_press(self, user: JSON, message_id: int, data: str) -> Update | None:
        """A tap on an inline button of a bot message still in the chat; None when there is no such
        button (the page only shows the ones the bot sent)."""
        chat_id = int(user["id"])
        message = self.store.message(chat_id, message_id)
        rows: list[list[JSON]] = (message or {}).get("reply_markup", {}).get("inline_keyboard", [])
        if message is None or not any(button.get("callback_data") == data for row in rows for button in row):
            return None
        query = {
            "id": self.store.new_callback(chat_id),
            "from": user,
            "chat_instance": str(chat_id),
            "message": message,
            "data": data,
        }
        return self._update({"callback_query": query})

    def _attachment(self, content: bytes, content_type: str, filename: str) -> JSON:
        file_id = self.store.add_file(content, content_type, filename)
        described: JSON = {"file_id": file_id, "file_unique_id": file_id, "file_size": len(content)}
        if content_type.startswith("image/"):
            width, height = _image_size(content)
            return {"photo": [{**described, "width": width, "height": height}]}
        if content_type.startswith("audio/"):
            return {"voice": {**described, "duration": 0, "mime_type": content_type}}
        return {"document": {**described, "file_name": filename, "mime_type": content_type}}

    def _update(self, fields: JSON) -> Update:
        return Update.model_validate(
            {"update_id": self.store.next_update_id(), **fields}, context={"bot": self.bot}
        )


def _commands(field: str, text: str) -> dict[str, Any]:
    """The bot_command entity Telegram marks a leading /command with (aiogram's Command filter reads
    the text itself, but handlers may look at the entities)."""
    if not text.startswith("/"):
        return {}
    command = text.split(maxsplit=1)[0]
    return {field: [{"type": "bot_command", "offset": 0, "length": len(command.encode("utf-16-le")) // 2}]}


def _image_size(content: bytes) -> tuple[int, int]:
    try:
        with Image.open(io.BytesIO(content)) as image:
            return image.size
    except (UnidentifiedImageError, OSError):
        return 0, 0
