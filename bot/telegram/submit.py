"""From a Telegram message to the intake, and its outcome back into the chat.

Shared by every generation command, so each handler only builds its kind's fields.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiogram.types import InaccessibleMessage, Message
from loguru import logger

from bot.telegram.keyboards import answer_insufficient_balance
from generation import intake
from generation.catalog import Kind
from generation.dispatcher import Dispatcher
from generation.services import Services
from generation.store import User


@dataclass(frozen=True)
class Requester:
    """Who asks, through which bot (injected into every handler by bot/telegram/middlewares.py): a handler
    only builds its kind's fields and calls `submit`."""

    user: User
    bot_name: str
    lang: str
    services: Services
    generations: Dispatcher

    async def submit(
        self,
        message: Message | InaccessibleMessage,
        *,
        kind: Kind,
        fields: dict[str, Any],
        event: str | None = None,
    ) -> intake.Outcome:
        """Hand the request to the intake; answer bad input, a low balance or a problem found while
        checking or preparing the request in the user's language, in the message's chat.

        The request key is the message's own (bot, chat, message id) unless `event` names what else
        made the request (a button pressed: "repeat:<callback query id>")."""
        data = {
            "telegram_id": self.user.telegram_id,
            "username": self.user.username,
            "is_ru": self.lang == "ru",
            "bot_name": self.bot_name,
            "chat_id": message.chat.id,
            **fields,
        }
        origin = intake.FromTelegram(self.bot_name, message.chat.id, event or str(message.message_id))
        outcome = await intake.submit(self.generations, intake.Incoming(kind, data, origin, self.user))
        if isinstance(outcome, intake.Refused):
            await message.answer("\n".join(problem.message(self.lang) for problem in outcome.problems))
        elif isinstance(outcome, intake.Unaffordable):
            await answer_insufficient_balance(
                message, self.lang, needed=outcome.needed, balance=outcome.balance
            )
        elif not outcome.created:
            # A repeated update: the first delivery already started it; say nothing more (SPEC §4.2).
            logger.bind(generation=outcome.generation.id).info("duplicate Telegram update ignored")
        return outcome
