"""From a Telegram message to a submitted generation: validate, submit, answer problems.

Shared by every generation command, so each handler only builds its kind's fields.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiogram.types import Message
from loguru import logger

from bot.keyboards import answer_insufficient_balance
from generation.catalog import Kind
from generation.dispatcher import Dispatcher, Submission
from generation.ledger import InsufficientBalance
from generation.requests import InvalidRequest, validate_request
from generation.services import Services
from generation.store import User


def telegram_request_key(bot_name: str, message: Message) -> str:
    """Bot, chat and message id: the same update delivered twice maps to the same generation (SPEC §4.2)."""
    return f"tg:{bot_name}:{message.chat.id}:{message.message_id}"


@dataclass(frozen=True)
class Requester:
    """Who asks, through which bot (injected into every handler by bot/middlewares.py): a handler
    only builds its kind's fields and calls `submit`."""

    user: User
    bot_name: str
    lang: str
    services: Services
    generations: Dispatcher

    async def submit(self, message: Message, *, kind: Kind, fields: dict[str, Any]) -> Submission | None:
        """Validate, record and charge, then run; answers bad input, a low balance or a problem found
        while preparing the request in the user's language. None when nothing was submitted."""
        lang = self.lang
        data = {
            "telegram_id": self.user.telegram_id,
            "username": self.user.username,
            "is_ru": lang == "ru",
            "bot_name": self.bot_name,
            "chat_id": message.chat.id,
            **fields,
        }
        services = self.services
        try:
            valid = validate_request(kind, data, services.catalog, set(services.settings.bot_tokens))
            submission = await self.generations.submit(
                valid, telegram_request_key(self.bot_name, message), self.bot_name
            )
        except InvalidRequest as invalid:
            await message.answer("\n".join(problem.message(lang) for problem in invalid.problems))
            return None
        except InsufficientBalance as error:
            await answer_insufficient_balance(message, lang, needed=error.needed, balance=error.balance)
            return None
        if not submission.created:
            # A repeated update: the first delivery already started it; say nothing more (SPEC §4.2).
            logger.bind(generation=submission.generation.id).info("duplicate Telegram update ignored")
        return submission
