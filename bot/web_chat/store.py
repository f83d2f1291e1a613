"""What the web chat remembers, in memory: each chat's messages, the events the page reads (a message
new, edited or deleted, a notice) after a cursor, and the files both sides sent."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import secrets
import time
import uuid
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

JSON = dict[str, Any]

# Events kept per chat for a page that reloads: older ones are dropped (the chat is a demo channel,
# not an archive; the generations themselves are in the database).
EVENTS_PER_CHAT = 500
# Bytes of media kept in all; the oldest files go first past it.
MEDIA_BYTES = 256 * 1024 * 1024
CALLBACKS_KEPT = 10_000


@dataclass
class StoredFile:
    content: bytes
    content_type: str
    filename: str


@dataclass
class _Chat:
    messages: dict[int, JSON] = field(default_factory=dict)
    events: deque[JSON] = field(default_factory=lambda: deque(maxlen=EVENTS_PER_CHAT))
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)


class ChatStore:
    def __init__(self) -> None:
        self._chats: dict[int, _Chat] = {}
        self._files: OrderedDict[str, StoredFile] = OrderedDict()
        self._file_bytes = 0
        # Message ids are never reused, not even by the next process: the generation core keys a
        # request by chat and message id (a Telegram update delivered twice makes one generation), so
        # they start from the clock, in milliseconds.
        self._message_ids = itertools.count(int(time.time() * 1000))
        self._update_ids = itertools.count(int(time.time() * 1000))
        self._event_ids = itertools.count(int(time.time() * 1000))  # a reloaded page after a restart reads on
        # Which chat a callback query came from, until it is answered (the answer shows in that chat).
        self.callbacks: OrderedDict[str, int] = OrderedDict()

    def next_message_id(self) -> int:
        return next(self._message_ids)

    def next_update_id(self) -> int:
        return next(self._update_ids)

    def new_callback(self, chat_id: int) -> str:
        query_id = uuid.uuid4().hex
        self.callbacks[query_id] = chat_id
        while len(self.callbacks) > CALLBACKS_KEPT:  # never answered: forgotten, oldest first
            self.callbacks.popitem(last=False)
        return query_id

    def message(self, chat_id: int, message_id: int) -> JSON | None:
        return self._chat(chat_id).messages.get(message_id)

    async def add_message(self, chat_id: int, message: JSON) -> None:
        chat = self._chat(chat_id)
        chat.messages[message["message_id"]] = message
        await self._push(chat, {"type": "message", "message": message})

    async def edit_message(self, chat_id: int, message: JSON) -> None:
        chat = self._chat(chat_id)
        chat.messages[message["message_id"]] = message
        await self._push(chat, {"type": "edit", "message": message})

    async def delete_message(self, chat_id: int, message_id: int) -> bool:
        chat = self._chat(chat_id)
        if chat.messages.pop(message_id, None) is None:
            return False
        await self._push(chat, {"type": "delete", "message_id": message_id})
        return True

    async def notice(self, chat_id: int, text: str) -> None:
        """What Telegram shows for a moment above the chat (a callback query's answer)."""
        await self._push(self._chat(chat_id), {"type": "notice", "text": text})

    async def events_after(self, chat_id: int, cursor: int, wait: float) -> list[JSON]:
        """The chat's events after `cursor`, waiting up to `wait` seconds for one when there is none."""
        chat = self._chat(chat_id)

        def newer() -> list[JSON]:
            return [event for event in chat.events if event["cursor"] > cursor]

        async with chat.changed:
            if not newer() and wait > 0:
                with contextlib.suppress(TimeoutError):  # none came: an empty answer, read again
                    await asyncio.wait_for(chat.changed.wait_for(lambda: bool(newer())), wait)
            return newer()

    def add_file(self, content: bytes, content_type: str, filename: str) -> str:
        # Unguessable: a file's id is what lets a page fetch it, so one user cannot read another's.
        file_id = secrets.token_urlsafe(18)
        self._files[file_id] = StoredFile(content, content_type, filename)
        self._file_bytes += len(content)
        while self._file_bytes > MEDIA_BYTES and len(self._files) > 1:
            _, dropped = self._files.popitem(last=False)
            self._file_bytes -= len(dropped.content)
        return file_id

    def file(self, file_id: str) -> StoredFile | None:
        return self._files.get(file_id)

    def _chat(self, chat_id: int) -> _Chat:
        chat = self._chats.get(chat_id)
        if chat is None:
            chat = self._chats[chat_id] = _Chat()
        return chat

    async def _push(self, chat: _Chat, event: JSON) -> None:
        event["cursor"] = next(self._event_ids)
        async with chat.changed:
            chat.events.append(event)
            chat.changed.notify_all()
