"""/start (with a keyboard of what to do first), /help, /balance (dated operations), /lang."""

from __future__ import annotations

from aiogram import F, Router
from aiogram.filters import Command, CommandStart
from aiogram.types import (
    CallbackQuery,
    InaccessibleMessage,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    Message,
)

from bot.telegram.filters import in_loop
from bot.telegram.keyboards import topup_button, topup_keyboard
from bot.telegram.routers.image import chosen_model
from generation import ledger
from generation.archives import MEGABYTE, TRAINING_ARCHIVE
from generation.catalog import PROVIDER_KEYS, Kind
from generation.history import LedgerLine, Purpose, recent_ledger_lines
from generation.services import Services
from generation.store import User, as_utc
from generation.texts import text

# The price each command line quotes: the cheapest model of its kind.
COMMAND_KINDS = {
    "image": Kind.text_to_image,
    "video": Kind.text_to_video,
    "animate": Kind.image_to_video,
    "speech": Kind.text_to_speech,
    "voice": Kind.voice_avatar,
    "train": Kind.model_training,
    "photo": Kind.neuro_photo,
}

# The /start keyboard's buttons: "start:<what>"; "buy" (Top up) is the payments router's.
START_CALLBACK = "start:"
START_BUTTONS = (
    ("images", "journey_button_images"),
    ("video", "journey_button_video"),
    ("voice", "journey_button_voice"),
    ("my_model", "journey_button_my_model"),
)
LANGUAGE_BUTTON = "language"
DATE_FORMAT = "%Y-%m-%d %H:%M"
BALANCE_LINES = 10


def commands_text(services: Services, lang: str) -> str:
    prices = {
        command: min((model.price for model in services.catalog.for_kind(kind)), default=0)
        for command, kind in COMMAND_KINDS.items()
    }
    return text("commands", lang, **prices) + "\n" + text("journey_commands_more", lang)


def start_keyboard(lang: str) -> InlineKeyboardMarkup:
    """What to do first: images, video, voice, my model, top up, language."""

    def button(what: str, key: str) -> InlineKeyboardButton:
        return InlineKeyboardButton(text=text(key, lang), callback_data=START_CALLBACK + what)

    images, video, voice, my_model = (button(what, key) for what, key in START_BUTTONS)
    return InlineKeyboardMarkup(
        inline_keyboard=[
            [images, video],
            [voice, my_model],
            [topup_button(lang), button(LANGUAGE_BUTTON, "journey_button_language")],
        ]
    )


async def start(message: Message, user: User, lang: str, services: Services) -> None:
    name = message.from_user.first_name if message.from_user else ""
    greeting = text("start", lang, name=name, balance=user.balance, commands=commands_text(services, lang))
    if user.balance <= 0:
        greeting += "\n\n" + text("journey_start_empty_balance", lang)
    await message.answer(greeting, reply_markup=start_keyboard(lang))


async def start_button(query: CallbackQuery, user: User, lang: str, services: Services) -> None:
    """A /start button: the usage of that feature (or the language switched), as a new message."""
    what = (query.data or "").removeprefix(START_CALLBACK)
    chat = query.message
    if chat is None:
        await query.answer()
        return
    if what == LANGUAGE_BUTTON:
        await query.answer()
        await _switch_language(chat, user, services)
        return
    answer = _feature_help(what, user, lang, services)
    await query.answer()
    if answer is not None:
        await chat.answer(answer)


def _price(services: Services, kind: Kind, user: User | None = None) -> tuple[str, int]:
    """The title and price of the model a command would use for this user now."""
    catalog = services.catalog
    model = (chosen_model(user, kind, catalog) if user is not None else None) or catalog.default_for(kind)
    return (model.title, model.price) if model is not None else ("-", 0)


def _feature_help(what: str, user: User, lang: str, services: Services) -> str | None:
    if what == "images":
        title, price = _price(services, Kind.text_to_image, user)
        return text("journey_images_help", lang, model=title, price=price)
    if what == "video":
        video_title, video_price = _price(services, Kind.text_to_video, user)
        animate_title, animate_price = _price(services, Kind.image_to_video, user)
        return text(
            "journey_video_help",
            lang,
            video_model=video_title,
            video_price=video_price,
            animate_model=animate_title,
            animate_price=animate_price,
        )
    if what == "voice":
        return text(
            "journey_voice_help",
            lang,
            speech_price=_price(services, Kind.text_to_speech)[1],
            voice_price=_price(services, Kind.voice_avatar)[1],
        )
    if what == "my_model":
        if user.lora_version and user.lora_trigger_word:
            price = _price(services, Kind.neuro_photo)[1]
            return text("train_ready", lang, trigger_word=user.lora_trigger_word, price=price)
        return text(
            "train_usage",
            lang,
            price=_price(services, Kind.model_training)[1],
            min_images=TRAINING_ARCHIVE.min_images,
            limit_mb=TRAINING_ARCHIVE.max_bytes // MEGABYTE,
        )
    return None


async def help_command(message: Message, lang: str, services: Services) -> None:
    models = "\n".join(
        text("model_line", lang, title=model.title, price=model.price)
        for kind in COMMAND_KINDS.values()
        for model in services.catalog.for_kind(kind)
    )
    answer = text("help", lang, commands=commands_text(services, lang), models=models)
    demo_kinds = sorted({model.kind.slug for model in services.catalog.models.values() if model.demo})
    if demo_kinds:
        keys = " / ".join(PROVIDER_KEYS[name] for name in sorted(services.catalog.demo_providers))
        answer += "\n\n" + text("help_demo", lang, keys=keys, kinds=", ".join(demo_kinds))
    await message.answer(answer)


async def balance(message: Message, user: User, lang: str, services: Services) -> None:
    """The balance, then the latest operations: when, how much, and what for."""
    async with services.db.sessions() as session:
        current = await ledger.balance_of(session, user.id)
    lines = [text("balance", lang, balance=current)]
    entries = await recent_ledger_lines(services.db, user.id, limit=BALANCE_LINES)
    if entries:
        lines += ["", text("journey_balance_title", lang)]
        lines += [ledger_line(entry, lang, services) for entry in entries]
    await message.answer("\n".join(lines), reply_markup=topup_keyboard(lang))


def ledger_line(line: LedgerLine, lang: str, services: Services) -> str:
    amount = f"+{line.amount}" if line.amount > 0 else f"−{-line.amount}"
    return text(
        "journey_ledger_line",
        lang,
        date=as_utc(line.created_at).strftime(DATE_FORMAT),
        amount=amount,
        what=_what_for(line, lang, services),
    )


def _what_for(line: LedgerLine, lang: str, services: Services) -> str:
    if line.purpose in (Purpose.charge, Purpose.refund):
        model = services.catalog.get(line.model or "")
        if line.kind is None:
            return text(f"journey_ledger_{line.purpose.value}", lang)
        return text(
            f"journey_ledger_{line.purpose.value}_of",
            lang,
            kind=text(f"journey_kind_{line.kind.value}", lang),
            model=model.title if model is not None else (line.model or "-"),
        )
    return text(f"journey_ledger_{line.purpose.value}", lang)


async def switch_language(message: Message, user: User, services: Services) -> None:
    await _switch_language(message, user, services)


async def _switch_language(chat: Message | InaccessibleMessage, user: User, services: Services) -> None:
    new_language = "en" if user.language == "ru" else "ru"
    async with services.db.transaction() as session:
        stored = await session.get(User, user.id)
        assert stored is not None
        stored.language = new_language
    await chat.answer(text("lang_switched", new_language))


def build_router() -> Router:
    """A new router each time: aiogram attaches a router to one dispatcher only."""
    router = Router(name="start")
    router.message.register(start, CommandStart())
    router.message.register(help_command, Command("help"))
    router.message.register(balance, Command("balance"))
    router.message.register(switch_language, Command("lang"), in_loop(F.from_user))
    router.callback_query.register(start_button, in_loop(F.data.startswith(START_CALLBACK)))
    return router
