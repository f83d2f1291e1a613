"""How pipelines reach the user's chat, without knowing Telegram: bot/ implements this protocol.

Errors: a chat that cannot be reached for good (blocked the bot, deleted chat) is DeliveryRefused,
which is final; flood control and network trouble are DeliveryRetryLater.
"""

from __future__ import annotations

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

    async def delete_message(self, bot_name: str, chat_id: int, message_id: int) -> None:
        return None

    async def chat_action(self, bot_name: str, chat_id: int, action: str) -> None:
        return None
