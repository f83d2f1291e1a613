"""Last router: anything no other handler took, including admin commands from non-admins."""

from __future__ import annotations

from aiogram import F, Router
from aiogram.types import Message

from bot.telegram.filters import in_loop
from generation.texts import text


async def unknown_command(message: Message, lang: str) -> None:
    await message.answer(text("unknown_command", lang))


def build_router() -> Router:
    """A new router each time: aiogram attaches a router to one dispatcher only."""
    router = Router(name="unknown")
    # A command nobody took, typed or as the caption of a photo or file.
    router.message.register(unknown_command, in_loop(F.text.startswith("/") | F.caption.startswith("/")))
    return router
