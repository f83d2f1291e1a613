"""Keep aiogram's parsed-response types alive for the life of the process.

aiogram parses every Bot API answer with `Response[<the method's return type>]`, a pydantic generic
built on demand; pydantic caches those classes only weakly, so once the garbage collector drops one it
is rebuilt on the next call, 5-7 ms of CPU each time (measured with `python -m bench.hot_path
--profile`: 7-13 % of the product's CPU under load). Building each one once, here, and holding it
makes every later call find it in pydantic's cache."""

from __future__ import annotations

import inspect
from typing import Any

from aiogram import methods
from aiogram.methods.base import Response, TelegramMethod

_KEPT: list[Any] = []


def keep_response_types() -> int:
    """Build and hold `Response[T]` for every Bot API method's return type; answers how many."""
    if not _KEPT:
        returning = {
            repr(method.__returning__): method.__returning__
            for method in vars(methods).values()
            if inspect.isclass(method) and issubclass(method, TelegramMethod) and method is not TelegramMethod
        }
        _KEPT.extend(Response[kind] for kind in returning.values())  # type: ignore[valid-type]
    return len(_KEPT)
