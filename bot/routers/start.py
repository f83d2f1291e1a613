"""/start, /help, /balance, /lang."""

from __future__ import annotations

from aiogram import F, Router
from aiogram.filters import Command, CommandStart
from aiogram.types import Message

from generation import ledger
from generation.catalog import Kind
from generation.services import Services
from generation.store import User
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


def commands_text(services: Services, lang: str) -> str:
    prices = {
        command: min((model.price for model in services.catalog.for_kind(kind)), default=0)
        for command, kind in COMMAND_KINDS.items()
    }
    return text("commands", lang, **prices)


async def start(message: Message, user: User, lang: str, services: Services) -> None:
    name = message.from_user.first_name if message.from_user else ""
    await message.answer(
        text("start", lang, name=name, balance=user.balance, commands=commands_text(services, lang))
    )


async def help_command(message: Message, lang: str, services: Services) -> None:
    models = "\n".join(
        text("model_line", lang, title=model.title, price=model.price)
        for kind in COMMAND_KINDS.values()
        for model in services.catalog.for_kind(kind)
    )
    await message.answer(text("help", lang, commands=commands_text(services, lang), models=models))


async def balance(message: Message, user: User, lang: str, services: Services) -> None:
    async with services.db.sessions() as session:
        current = await ledger.balance_of(session, user.id)
        entries = await ledger.recent_entries(session, user.id)
    lines = [text("balance", lang, balance=current)]
    if entries:
        lines += ["", text("balance_history", lang)]
        for entry in entries:
            key = entry.operation_key.split(":", 1)[0]
            template = {"charge": "ledger_charge", "refund": "ledger_refund"}.get(key, "ledger_grant")
            lines.append(text(template, lang, amount=abs(entry.amount)))
    await message.answer("\n".join(lines))


async def switch_language(message: Message, user: User, services: Services) -> None:
    new_language = "en" if user.language == "ru" else "ru"
    async with services.db.transaction() as session:
        stored = await session.get(User, user.id)
        assert stored is not None
        stored.language = new_language
    await message.answer(text("lang_switched", new_language))


def build_router() -> Router:
    """A new router each time: aiogram attaches a router to one dispatcher only."""
    router = Router(name="start")
    router.message.register(start, CommandStart())
    router.message.register(help_command, Command("help"))
    router.message.register(balance, Command("balance"))
    router.message.register(switch_language, Command("lang"), F.from_user)
    return router
