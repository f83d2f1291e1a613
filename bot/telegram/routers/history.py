"""/history: the user's recent generations, each with a "repeat" button that submits it again.

A repeat is a new generation, charged again, under a request key made from the button press's
callback query id: Telegram delivering the same press twice makes one generation, while pressing the
button again on purpose makes another (SPEC §4.2: never a key derived from the prompt).
"""

from __future__ import annotations

import contextlib

from aiogram import F, Router
from aiogram.exceptions import TelegramAPIError
from aiogram.filters import Command
from aiogram.types import CallbackQuery, InlineKeyboardButton, InlineKeyboardMarkup, Message

from bot.telegram.filters import in_loop
from bot.telegram.submit import Requester
from generation.catalog import Kind
from generation.dispatcher import Submission
from generation.history import can_repeat, recent_generations, repeat_fields, request_excerpt
from generation.services import Services
from generation.store import Generation, User, as_utc, get_generation
from generation.texts import text

REPEAT_CALLBACK = "repeat:"
HISTORY_SIZE = 10
DATE_FORMAT = "%Y-%m-%d %H:%M"
BUTTONS_PER_ROW = 3


async def history(message: Message, user: User, lang: str, services: Services) -> None:
    generations = await recent_generations(services.db, user.id, limit=HISTORY_SIZE)
    if not generations:
        await message.answer(text("journey_history_empty", lang))
        return
    lines = [text("journey_history_title", lang)]
    buttons: list[InlineKeyboardButton] = []
    for number, generation in enumerate(generations, start=1):
        lines += ["", history_item(number, generation, lang, services)]
        if can_repeat(generation):
            buttons.append(
                InlineKeyboardButton(
                    text=text("journey_repeat_button", lang, number=number),
                    callback_data=REPEAT_CALLBACK + generation.id,
                )
            )
    rows = [buttons[index : index + BUTTONS_PER_ROW] for index in range(0, len(buttons), BUTTONS_PER_ROW)]
    await message.answer(
        "\n".join(lines), reply_markup=InlineKeyboardMarkup(inline_keyboard=rows) if rows else None
    )


def history_item(number: int, generation: Generation, lang: str, services: Services) -> str:
    """'1. images · Flux Dev · 2025-03-05 14:02 · ✅ done · 3 ⭐', then the prompt."""
    model = services.catalog.get(generation.model)
    try:
        kind = text(f"journey_kind_{Kind(generation.kind).value}", lang)
    except ValueError:
        kind = generation.kind
    if generation.refunded > 0:
        money = text("journey_history_refunded", lang, price=generation.price, refund=generation.refunded)
    else:
        money = text("journey_history_charged", lang, price=generation.price)
    item = text(
        "journey_history_item",
        lang,
        number=number,
        kind=kind,
        model=model.title if model is not None else generation.model,
        date=as_utc(generation.created_at).strftime(DATE_FORMAT),
        status=text(f"journey_status_{generation.status}", lang),
        money=money,
    )
    excerpt = request_excerpt(generation)
    return item + ("\n" + text("journey_history_excerpt", lang, excerpt=excerpt) if excerpt else "")


async def repeat(
    query: CallbackQuery, user: User, lang: str, services: Services, requester: Requester
) -> None:
    """The repeat button: the same request as a new generation (charged again), one per button press."""
    generation = await get_generation(services.db, (query.data or "").removeprefix(REPEAT_CALLBACK))
    fields = repeat_fields(generation) if generation is not None and generation.user_id == user.id else None
    if generation is None or fields is None or query.message is None:
        await query.answer(text("journey_repeat_unavailable", lang))
        return
    outcome = await requester.submit(
        query.message, kind=Kind(generation.kind), fields=fields, event=f"repeat:{query.id}"
    )
    started = isinstance(outcome, Submission)
    with contextlib.suppress(TelegramAPIError):  # a redelivered press: Telegram forgot the query
        await query.answer(text("journey_repeat_started", lang) if started else None)


def build_router() -> Router:
    """A new router each time: aiogram attaches a router to one dispatcher only."""
    router = Router(name="history")
    router.message.register(history, Command("history"))
    router.callback_query.register(repeat, in_loop(F.data.startswith(REPEAT_CALLBACK)))
    return router
