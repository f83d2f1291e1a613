"""From a Telegram message to a submitted generation: validate, submit, answer problems.

Shared by every generation command, so each handler only builds its kind's fields.
"""

from __future__ import annotations

from typing import Any

from aiogram.types import Message
from loguru import logger

from generation.catalog import Kind
from generation.dispatcher import Dispatcher, Submission
from generation.ledger import InsufficientBalance
from generation.requests import InvalidRequest, validate_request
from generation.services import Services
from generation.store import User
from generation.texts import text


def telegram_request_key(bot_name: str, message: Message) -> str:
    """Bot, chat and message id: the same update delivered twice maps to the same generation (SPEC §4.2)."""
    return f"tg:{bot_name}:{message.chat.id}:{message.message_id}"


async def submit_from_message(
    message: Message,
    *,
    kind: Kind,
    fields: dict[str, Any],
    user: User,
    bot_name: str,
    lang: str,
    services: Services,
    generations: Dispatcher,
) -> Submission | None:
    data = {
        "telegram_id": user.telegram_id,
        "username": user.username,
        "is_ru": lang == "ru",
        "bot_name": bot_name,
        "chat_id": message.chat.id,
        **fields,
    }
    try:
        valid = validate_request(kind, data, services.catalog, set(services.settings.bot_tokens))
    except InvalidRequest as invalid:
        await message.answer("\n".join(problem.message(lang) for problem in invalid.problems))
        return None
    try:
        submission = await generations.submit(valid, telegram_request_key(bot_name, message), bot_name)
    except InvalidRequest as invalid:
        await message.answer("\n".join(problem.message(lang) for problem in invalid.problems))
        return None
    except InsufficientBalance as error:
        await message.answer(text("insufficient_balance", lang, needed=error.needed, balance=error.balance))
        return None
    if not submission.created:
        # A repeated update: the first delivery already started it; say nothing more (SPEC §4.2).
        logger.bind(generation=submission.generation.id).info("duplicate Telegram update ignored")
    return submission
