"""Middlewares: who is writing (the user of this bot, registered at first contact) and which bot."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiogram import BaseMiddleware, Bot
from aiogram.types import TelegramObject
from aiogram.types import User as TelegramUser

from bot.telegram.conversation_storage import user_read_with_state
from bot.telegram.submit import Requester
from generation.log_context import about_requester
from generation.services import Services
from generation.texts import language_from_code
from generation.users import ensure_user, read_user


class UserMiddleware(BaseMiddleware):
    """Injects `bot_name`, `user` (our User row) and `lang` into every handler.

    The language comes from Telegram's language_code only when the user is created; after that it is
    the user's choice (/lang)."""

    def __init__(self, services: Services, bot_names: dict[int, str]) -> None:
        self.services = services
        self.bot_names = bot_names

    async def __call__(
        self,
        handler: Callable[[TelegramObject, dict[str, Any]], Awaitable[Any]],
        event: TelegramObject,
        data: dict[str, Any],
    ) -> Any:
        bot: Bot = data["bot"]
        sender: TelegramUser | None = data.get("event_from_user")
        bot_name = self.bot_names.get(bot.id)
        if sender is None or sender.is_bot or bot_name is None:
            return None
        # Every line while the update is handled (the record and charge, aiogram's and aiohttp's own)
        # names who wrote and to which bot; a generation it starts adds its own fields.
        with about_requester(sender.id, bot_name):
            # A read first: most updates come from known users, and a write transaction on every update
            # would queue each one behind the others on SQLite's single writer. Mostly the read of the
            # conversation's state, which comes first, has read the user too.
            read, user = user_read_with_state(bot_name, sender.id)
            if not read:
                user = await read_user(self.services.db, bot_name, sender.id)
            if user is None or (sender.username and user.username != sender.username):
                async with self.services.db.transaction(urgent=True) as session:
                    user, _ = await ensure_user(
                        session,
                        bot_name,
                        sender.id,
                        username=sender.username,
                        language=language_from_code(sender.language_code),
                        new_user_bonus=self.services.settings.new_user_bonus,
                    )
            data["bot_name"] = bot_name
            data["user"] = user
            data["lang"] = user.language
            data["requester"] = Requester(user, bot_name, user.language, self.services, data["generations"])
            return await handler(event, data)
