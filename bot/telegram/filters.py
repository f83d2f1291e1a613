"""Filters evaluated in the event loop.

aiogram runs a filter that is not a coroutine (a magic filter such as `F.data.startswith(...)`, or a
plain function) through `asyncio.to_thread`: a hop to a worker thread and back for every update and
every such filter it meets on its way to a handler. Wrapped in `in_loop`, the same check runs inline.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiogram.filters import Filter
from aiogram.types import TelegramObject
from magic_filter import MagicFilter


class _InLoop(Filter):
    def __init__(self, check: MagicFilter | Callable[[Any], Any]) -> None:
        self._check = check.resolve if isinstance(check, MagicFilter) else check

    async def __call__(self, event: TelegramObject) -> Any:
        return self._check(event)


def in_loop(check: MagicFilter | Callable[[Any], Any]) -> Filter:
    """`check` (a magic filter, or a function of the event) as a filter that runs without a thread."""
    return _InLoop(check)
