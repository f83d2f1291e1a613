"""/image [n] <prompt> and /model (the default image model, chosen on an inline keyboard)."""

from __future__ import annotations

from aiogram import F, Router
from aiogram.filters import Command, CommandObject
from aiogram.types import CallbackQuery, InlineKeyboardButton, InlineKeyboardMarkup, Message

from bot.submit import Requester
from generation.catalog import Kind
from generation.services import Services
from generation.store import User
from generation.texts import text

router = Router(name="image")

MODEL_CALLBACK = "model:"


def parse_image_arguments(arguments: str | None) -> tuple[int, str]:
    """'/image 4 a fox' asks for 4 images; a leading number is the count only if more text follows."""
    words = (arguments or "").strip().split(maxsplit=1)
    if len(words) == 2 and words[0].lstrip("-").isdigit():
        return int(words[0]), words[1]
    return 1, (arguments or "").strip()


async def image(
    message: Message,
    command: CommandObject,
    user: User,
    lang: str,
    services: Services,
    requester: Requester,
) -> None:
    count, prompt = parse_image_arguments(command.args)
    if not prompt:
        await message.answer(text("image_usage", lang))
        return
    model = user.image_model if user.image_model and services.catalog.get(user.image_model) else None
    await requester.submit(
        message, kind=Kind.text_to_image, fields={"prompt": prompt, "num_images": count, "model": model}
    )


async def choose_model(message: Message, user: User, lang: str, services: Services) -> None:
    models = services.catalog.for_kind(Kind.text_to_image)
    default = services.catalog.default_for(Kind.text_to_image)
    current = services.catalog.get(user.image_model or "") or default
    keyboard = InlineKeyboardMarkup(
        inline_keyboard=[
            [
                InlineKeyboardButton(
                    text=("✓ " if current and model.id == current.id else "")
                    + f"{model.title} · {model.price} ⭐",
                    callback_data=MODEL_CALLBACK + model.id,
                )
            ]
            for model in models
        ]
    )
    await message.answer(
        text("model_choose", lang, current=current.title if current else "-"), reply_markup=keyboard
    )


async def model_chosen(query: CallbackQuery, user: User, lang: str, services: Services) -> None:
    model_id = (query.data or "").removeprefix(MODEL_CALLBACK)
    model = services.catalog.get(model_id)
    if model is None or model.kind is not Kind.text_to_image:
        await query.answer()
        return
    async with services.db.transaction() as session:
        stored = await session.get(User, user.id)
        assert stored is not None
        stored.image_model = model.id
    await query.answer(text("model_chosen", lang, title=model.title))
    if query.message is not None and isinstance(query.message, Message):
        await query.message.edit_text(text("model_chosen", lang, title=model.title))


def build_router() -> Router:
    """A new router each time: aiogram attaches a router to one dispatcher only."""
    router = Router(name="image")
    router.message.register(image, Command("image"))
    router.message.register(choose_model, Command("model"))
    router.callback_query.register(model_chosen, F.data.startswith(MODEL_CALLBACK))
    return router
