"""/cancel and the Cancel button on a generation's status message."""

from __future__ import annotations

import contextlib

from aiogram import F, Router
from aiogram.exceptions import TelegramAPIError
from aiogram.filters import Command
from aiogram.types import CallbackQuery, Message

from generation.cancellation import Canceled, active_generations
from generation.dispatcher import Dispatcher
from generation.execution import CANCEL_CALLBACK
from generation.services import Services
from generation.steps import StepJournal
from generation.store import User, get_generation
from generation.texts import text


async def cancel_command(
    message: Message, user: User, lang: str, services: Services, generations: Dispatcher
) -> None:
    """Cancels every generation of this user that is still running in this bot."""
    canceled = [
        outcome
        for generation_id in await active_generations(services, user.id)
        if (outcome := await generations.cancel(generation_id)) is not None
    ]
    if not canceled:
        await message.answer(text("nothing_to_cancel", lang))
        return
    for outcome in canceled:
        await _clear_status_message(services, outcome)
    refund = sum(outcome.refund for outcome in canceled)
    await message.answer(text("canceled", lang, refund=refund, balance=canceled[-1].balance))


async def cancel_button(
    query: CallbackQuery, user: User, lang: str, services: Services, generations: Dispatcher
) -> None:
    generation_id = (query.data or "").removeprefix(CANCEL_CALLBACK)
    generation = await get_generation(services.db, generation_id)
    if generation is None or generation.user_id != user.id:
        await query.answer()  # not theirs: no information either way
        return
    outcome = await generations.cancel(generation_id)
    if outcome is None:
        await query.answer(text("already_finished", lang))
        return
    summary = text("canceled", lang, refund=outcome.refund, balance=outcome.balance)
    await query.answer(summary)
    if isinstance(query.message, Message):
        with contextlib.suppress(TelegramAPIError):
            await query.message.edit_text(summary)


async def _clear_status_message(services: Services, outcome: Canceled) -> None:
    generation = outcome.generation
    status_message_id = await StepJournal(services.db, generation.id).saved("status_message")
    if isinstance(status_message_id, int) and generation.chat_id is not None:
        await services.delivery.delete_message(generation.bot_name, generation.chat_id, status_message_id)


def build_router() -> Router:
    """A new router each time: aiogram attaches a router to one dispatcher only."""
    router = Router(name="cancel")
    router.message.register(cancel_command, Command("cancel"))
    router.callback_query.register(cancel_button, F.data.startswith(CANCEL_CALLBACK))
    return router
