"""What every log line about a generation carries: its id, kind, plan, user and bot.

They are set as loguru context (a contextvar) around the code that handles a generation, not passed
to each call: every line emitted in that task then carries them, and so do the tasks it starts (they
copy the context) and the lines of the libraries it calls (aiogram, aiohttp, httpx, the providers'
SDKs, arq), which logs.py routes from the standard logging into loguru in the same task. Another
task's lines are untouched, so two generations handled at once never borrow each other's fields.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

from loguru import logger

from generation.store import Generation


def fields_of(generation: Generation) -> dict[str, Any]:
    """The generation's own fields. The user is the Telegram id the request was made for (kept in
    the stored request), so no read of the user's row is needed to name them."""
    fields: dict[str, Any] = {
        "generation": generation.id,
        "kind": generation.kind,
        "plan": generation.plan,
        "bot": generation.bot_name,
    }
    user = (generation.request or {}).get("telegram_id")
    if isinstance(user, int):
        fields["user"] = user
    return fields


def about_generation(generation: Generation) -> AbstractContextManager[None]:
    """`with about_generation(generation):` every line inside carries the generation's fields."""
    return logger.contextualize(**fields_of(generation))


def about_requester(user: int, bot: str) -> AbstractContextManager[None]:
    """Around a request being taken in (a Telegram update, an API call): its record and charge lines
    name who asked and through which bot before the generation has an id."""
    return logger.contextualize(user=user, bot=bot)
