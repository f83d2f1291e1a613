"""From a Telegram message to a submitted generation: validate, submit, answer problems.

Shared by every generation command, so each handler only builds its kind's fields.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiogram.types import InaccessibleMessage, Message
from loguru import logger

from bot.keyboards import answer_insufficient_balance, topup_keyboard
from generation.catalog import Kind
from generation.dispatcher import Dispatcher, Submission
from generation.ledger import InsufficientBalance
from generation.requests import InvalidRequest, validate_request
from generation.services import Services
from generation.store import User
from generation.texts import count_of, text


def telegram_request_key(bot_name: str, message: Message | InaccessibleMessage) -> str:
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

    async def submit(
        self,
        message: Message | InaccessibleMessage,
        *,
        kind: Kind,
        fields: dict[str, Any],
        request_key: str | None = None,
    ) -> Submission | None:
        """Validate, record and charge, then run; answers bad input, a low balance or a problem found
        while preparing the request in the user's language, in the message's chat. None when nothing
        was submitted.

        The request key defaults to the message's own (bot, chat, message id); a request that comes
        from elsewhere (a button pressed: its callback query id) passes its own."""
        lang = self.lang
        chat_id = message.chat.id
        data = {
            "telegram_id": self.user.telegram_id,
            "username": self.user.username,
            "is_ru": lang == "ru",
            "bot_name": self.bot_name,
            "chat_id": chat_id,
            **fields,
        }
        services = self.services
        key = request_key or telegram_request_key(self.bot_name, message)
        try:
            valid = validate_request(kind, data, services.catalog, set(services.settings.bot_tokens))
            submission = await self.generations.submit(valid, key, self.bot_name)
        except InvalidRequest as invalid:
            await message.answer("\n".join(problem.message(lang) for problem in invalid.problems))
            return None
        except InsufficientBalance as error:
            if isinstance(message, Message):
                await answer_insufficient_balance(message, lang, needed=error.needed, balance=error.balance)
            else:
                # A button pressed under a message the bot can no longer see: the same answer.
                missing = max(error.needed - error.balance, 0)
                await message.answer(
                    text(
                        "insufficient_balance",
                        lang,
                        needed=error.needed,
                        balance=error.balance,
                        missing=count_of(missing, "star", lang),
                    ),
                    reply_markup=topup_keyboard(lang, missing),
                )
            return None
        if not submission.created:
            # A repeated update: the first delivery already started it; say nothing more (SPEC §4.2).
            logger.bind(generation=submission.generation.id).info("duplicate Telegram update ignored")
        return submission
