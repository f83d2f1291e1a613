"""Last router: anything no other handler took, including admin commands from non-admins."""

from __future__ import annotations

from aiogram import F, Router
from aiogram.types import Message

from generation.texts import text

router = Router(name="unknown")


@router.message(F.text.startswith("/"))
async def unknown_command(message: Message, lang: str) -> None:
    await message.answer(text("unknown_command", lang))
