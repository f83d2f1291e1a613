"""/cancel and the Cancel button on a generation's status message."""

from __future__ import annotations

import contextlib

from aiogram import F, Router
from aiogram.exceptions import TelegramAPIError
from aiogram.filters import Command
from aiogram.types import CallbackQuery, Message

from bot.telegram.filters import in_loop
from generation.cancellation import Canceled, active_generations, being_delivered
from generation.dispatcher import Dispatcher
from generation.execution import CANCEL_CALLBACK
from generation.services import Services
from generation.steps import StepJournal
from generation.store import User, get_generation
from generation.texts import text


async def cancel_command(
    message: Message, user: User, lang: str, services: Services, generations: Dispatcher
) -> None:
    """Cancels every generation of this user that is still running in this bot; one whose result is
    already being sent is not cancelled (the user is told so)."""
    canceled: list[Canceled] = []
    being_sent = False
    for generation_id in await active_generations(services, user.id):
        outcome = await generations.cancel(generation_id)
        if outcome is not None:
            canceled.append(outcome)
        elif await being_delivered(services, generation_id):
            being_sent = True
    for outcome in canceled:
        await _clear_status_message(services, outcome)
    if canceled:
        refund = sum(outcome.refund for outcome in canceled)
        await message.answer(text("canceled", lang, refund=refund, balance=canceled[-1].balance))
    if being_sent:
        await message.answer(text("already_being_sent", lang))
    elif not canceled:
        await message.answer(text("nothing_to_cancel", lang))


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
        # Pressed as the result set off (the button goes with that edit): it arrives, and is paid for.
        sending = await being_delivered(services, generation_id)
        await query.answer(text("already_being_sent" if sending else "already_finished", lang))
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
    router.callback_query.register(cancel_button, in_loop(F.data.startswith(CANCEL_CALLBACK)))
    return router
