"""/image [n] <prompt> and /model: the model of each kind that has several (images, video, animate),
chosen on an inline keyboard and remembered per user."""

from __future__ import annotations

import contextlib

from aiogram import F, Router
from aiogram.exceptions import TelegramBadRequest
from aiogram.filters import Command, CommandObject
from aiogram.types import (
    CallbackQuery,
    InaccessibleMessage,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    Message,
)

from bot.telegram.arguments import UnreadableCount, counted_prompt
from bot.telegram.filters import in_loop
from bot.telegram.submit import Requester
from generation.catalog import Catalog, CatalogModel, Kind
from generation.requests import MAX_IMAGES
from generation.services import Services
from generation.store import User
from generation.texts import text

router = Router(name="image")

MODEL_CALLBACK = "model:"


async def image(
    message: Message,
    command: CommandObject,
    user: User,
    lang: str,
    services: Services,
    requester: Requester,
) -> None:
    asked = counted_prompt(command.args, maximum=MAX_IMAGES)
    if isinstance(asked, UnreadableCount):
        await message.answer(text("count_unreadable", lang, max=MAX_IMAGES, command="/image"))
        return
    if not asked.prompt:
        await message.answer(text("image_usage", lang))
        return
    model = chosen_model(user, Kind.text_to_image, services.catalog)
    await requester.submit(
        message,
        kind=Kind.text_to_image,
        fields={"prompt": asked.prompt, "num_images": asked.count, "model": model.id if model else None},
    )


# The command each kind is asked for with: how the model menu names a kind.
KIND_COMMANDS = {
    Kind.text_to_image: "/image",
    Kind.text_to_video: "/video",
    Kind.image_to_video: "/animate",
    Kind.text_to_speech: "/speech",
    Kind.neuro_photo: "/photo",
    Kind.voice_avatar: "/voice",
    Kind.model_training: "/train",
}
# "/model video" opens that kind's menu at once.
MENU_WORDS = {"image": Kind.text_to_image, "video": Kind.text_to_video, "animate": Kind.image_to_video}
KIND_MENU_CALLBACK = "models:"


def chosen_model(user: User, kind: Kind, catalog: Catalog) -> CatalogModel | None:
    """The model the user chose for a kind (/model), if it is still in the catalogue; else None (the
    kind's default is used)."""
    choices = user.model_choices or {}
    model_id = user.image_model if kind is Kind.text_to_image else choices.get(kind.value)
    model = catalog.get(str(model_id)) if model_id else None
    return model if model is not None and model.kind is kind else None


def menu_kinds(catalog: Catalog) -> list[Kind]:
    """Kinds with a choice to make: images always (the /model of old), others with several models."""
    return [kind for kind in Kind if kind is Kind.text_to_image or len(catalog.for_kind(kind)) > 1]


def _model_menu(user: User, kind: Kind, lang: str, catalog: Catalog) -> tuple[str, InlineKeyboardMarkup]:
    """A kind's models to choose from (the current one ticked) and buttons to the other kinds' menus."""
    current = chosen_model(user, kind, catalog) or catalog.default_for(kind)
    rows = [
        [
            InlineKeyboardButton(
                text=("✓ " if current and model.id == current.id else "")
                + f"{model.title} · {model.price} ⭐",
                callback_data=MODEL_CALLBACK + model.id,
            )
        ]
        for model in catalog.for_kind(kind)
    ]
    for other in menu_kinds(catalog):
        if other is kind:
            continue
        other_current = chosen_model(user, other, catalog) or catalog.default_for(other)
        label = text(
            "journey_model_kind_button",
            lang,
            command=KIND_COMMANDS[other],
            title=other_current.title if other_current else "-",
        )
        rows.append([InlineKeyboardButton(text=label, callback_data=KIND_MENU_CALLBACK + other.value)])
    title = current.title if current else "-"
    if kind is Kind.text_to_image:
        prompt = text("model_choose", lang, current=title)
    else:
        prompt = text("journey_model_choose_kind", lang, command=KIND_COMMANDS[kind], current=title)
    return prompt, InlineKeyboardMarkup(inline_keyboard=rows)


async def show_model_menu(
    message: Message | InaccessibleMessage, user: User, lang: str, services: Services, kind: Kind
) -> None:
    prompt, keyboard = _model_menu(user, kind, lang, services.catalog)
    await message.answer(prompt, reply_markup=keyboard)


async def choose_model(
    message: Message, command: CommandObject, user: User, lang: str, services: Services
) -> None:
    """/model: the image models, with buttons to the other kinds' menus; /model video (or animate)
    opens that kind's menu."""
    word = (command.args or "").strip().lower().lstrip("/")
    kind = MENU_WORDS.get(word, Kind.text_to_image)
    if kind not in menu_kinds(services.catalog):
        kind = Kind.text_to_image
    await show_model_menu(message, user, lang, services, kind)


async def kind_menu_chosen(query: CallbackQuery, user: User, lang: str, services: Services) -> None:
    """A button to another kind's menu: the same message now shows that kind's models."""
    try:
        kind = Kind((query.data or "").removeprefix(KIND_MENU_CALLBACK))
    except ValueError:
        await query.answer()
        return
    if kind not in menu_kinds(services.catalog):
        await query.answer()
        return
    await query.answer()
    prompt, keyboard = _model_menu(user, kind, lang, services.catalog)
    if isinstance(query.message, Message):
        with contextlib.suppress(TelegramBadRequest):  # "message is not modified": pressed twice
            await query.message.edit_text(prompt, reply_markup=keyboard)
    elif query.message is not None:
        await query.message.answer(prompt, reply_markup=keyboard)


async def model_chosen(query: CallbackQuery, user: User, lang: str, services: Services) -> None:
    """A model pressed: remembered for its kind (images in `image_model`, others in `model_choices`)."""
    model_id = (query.data or "").removeprefix(MODEL_CALLBACK)
    model = services.catalog.get(model_id)
    if model is None or model.kind not in menu_kinds(services.catalog):
        await query.answer()
        return
    async with services.db.transaction() as session:
        stored = await session.get(User, user.id)
        assert stored is not None
        if model.kind is Kind.text_to_image:
            stored.image_model = model.id
        else:
            # A JSON column persists a change only when a new value is assigned.
            stored.model_choices = {**(stored.model_choices or {}), model.kind.value: model.id}
    if model.kind is Kind.text_to_image:
        chosen = text("model_chosen", lang, title=model.title)
    else:
        chosen = text("journey_model_chosen_kind", lang, command=KIND_COMMANDS[model.kind], title=model.title)
    await query.answer(chosen[:200])
    if isinstance(query.message, Message):
        with contextlib.suppress(TelegramBadRequest):
            await query.message.edit_text(chosen)


def build_router() -> Router:
    """A new router each time: aiogram attaches a router to one dispatcher only."""
    router = Router(name="image")
    router.message.register(image, Command("image"))
    router.message.register(choose_model, Command("model"))
    router.callback_query.register(model_chosen, in_loop(F.data.startswith(MODEL_CALLBACK)))
    router.callback_query.register(kind_menu_chosen, in_loop(F.data.startswith(KIND_MENU_CALLBACK)))
    return router
