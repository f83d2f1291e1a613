"""(filled in by its feature)"""

from __future__ import annotations

from aiogram import Router


def build_router() -> Router:
    """A new router each time: aiogram attaches a router to one dispatcher only."""
    return Router(name="speech")
