"""How pipelines reach the user's chat, without knowing Telegram: bot/ implements this protocol.

Errors: a chat that cannot be reached for good (blocked the bot, deleted chat) is DeliveryRefused,
which is final; flood control and network trouble are DeliveryRetryLater (with Telegram's
`retry_after` when it gave one).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from providers.errors import StepError


class DeliveryRefused(StepError):
    reason = "failed_generic"


class DeliveryRetryLater(StepError):
    retryable = True
    reason = "failed_busy"


@dataclass(frozen=True)
class Media:
    content: bytes
    filename: str


# Telegram's Bot API takes uploads up to 50 MB (and lets bots download files up to 20 MB).
UPLOAD_LIMIT = 50 * 1024 * 1024
DOWNLOAD_LIMIT = 20 * 1024 * 1024


class InputTooLarge(StepError):
    reason = "failed_generic"


@dataclass(frozen=True)
class Button:
    text: str
    callback_data: str


class ChatDelivery(Protocol):
    def can_deliver(self, bot_name: str) -> bool: ...

    async def send_text(
        self, bot_name: str, chat_id: int, text: str, *, buttons: list[Button] | None = None
    ) -> int: ...

    async def send_images(self, bot_name: str, chat_id: int, images: list[Media]) -> list[int]: ...

    async def send_image_urls(
        self, bot_name: str, chat_id: int, urls: list[str], fetch: Callable[[str], Awaitable[bytes]]
    ) -> list[int]:
        """The images at `urls` as one album (or one photo), fetched by the chat's service itself
        where it can: their bytes then never pass through this process. Where it cannot (a URL it
        cannot reach, a file it will not take by URL) each is fetched with `fetch` and uploaded."""
        ...

    async def send_video(
        self, bot_name: str, chat_id: int, video: Media, caption: str | None = None
    ) -> int: ...

    async def send_voice(
        self, bot_name: str, chat_id: int, voice: Media, caption: str | None = None
    ) -> int: ...

    async def send_audio(
        self, bot_name: str, chat_id: int, audio: Media, caption: str | None = None
    ) -> int: ...

    async def send_document(
        self, bot_name: str, chat_id: int, document: Media, caption: str | None = None
    ) -> int: ...

    async def download_file(self, bot_name: str, file_id: str, max_bytes: int = DOWNLOAD_LIMIT) -> bytes:
        """A file a user sent, fetched through the bot. The file's URL carries the bot token: it is
        used here and never stored, logged or passed to a provider."""
        ...

    async def edit_text(
        self, bot_name: str, chat_id: int, message_id: int, text: str, *, buttons: list[Button] | None = None
    ) -> None:
        """Replace a message's text (and its buttons: without `buttons` it has none). An edit that
        changes nothing is no error."""
        ...

    async def delete_message(self, bot_name: str, chat_id: int, message_id: int) -> None: ...

    async def chat_action(self, bot_name: str, chat_id: int, action: str) -> None: ...


class NoDelivery:
    """For processes without bots (HTTP only, or a worker with no tokens): results stay in the database."""

    def can_deliver(self, bot_name: str) -> bool:
        return False

    async def send_text(
        self, bot_name: str, chat_id: int, text: str, *, buttons: list[Button] | None = None
    ) -> int:
        raise DeliveryRefused(f"no bot {bot_name!r} in this process")

    async def send_images(self, bot_name: str, chat_id: int, images: list[Media]) -> list[int]:
        raise DeliveryRefused(f"no bot {bot_name!r} in this process")

    async def send_image_urls(
        self, bot_name: str, chat_id: int, urls: list[str], fetch: Callable[[str], Awaitable[bytes]]
    ) -> list[int]:
        raise DeliveryRefused(f"no bot {bot_name!r} in this process")

    async def send_video(self, bot_name: str, chat_id: int, video: Media, caption: str | None = None) -> int:
        raise DeliveryRefused(f"no bot {bot_name!r} in this process")

    async def send_voice(self, bot_name: str, chat_id: int, voice: Media, caption: str | None = None) -> int:
        raise DeliveryRefused(f"no bot {bot_name!r} in this process")

    async def send_audio(self, bot_name: str, chat_id: int, audio: Media, caption: str | None = None) -> int:
        raise DeliveryRefused(f"no bot {bot_name!r} in this process")

    async def send_document(
        self, bot_name: str, chat_id: int, document: Media, caption: str | None = None
    ) -> int:
        raise DeliveryRefused(f"no bot {bot_name!r} in this process")

    async def download_file(self, bot_name: str, file_id: str, max_bytes: int = DOWNLOAD_LIMIT) -> bytes:
        raise DeliveryRefused(f"no bot {bot_name!r} in this process to fetch a file")

    async def edit_text(
        self, bot_name: str, chat_id: int, message_id: int, text: str, *, buttons: list[Button] | None = None
    ) -> None:
        raise DeliveryRefused(f"no bot {bot_name!r} in this process")

    async def delete_message(self, bot_name: str, chat_id: int, message_id: int) -> None:
        return None

    async def chat_action(self, bot_name: str, chat_id: int, action: str) -> None:
        return None
