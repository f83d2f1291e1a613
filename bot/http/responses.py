"""The JSON answers every route shares: an error, and the list of a request's problems."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from sqlalchemy.exc import DBAPIError

from generation.requests import Problem


def json_error(status: int, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status)


def json_problems(found: list[Problem]) -> web.Response:
    # SPEC §2.3: a 422 answers a JSON list of what is wrong.
    return web.json_response([problem.as_json() for problem in found], status=422)


# The database or the network had a bad moment: nothing was recorded or charged (the record and the
# charge are one transaction), and the same request may succeed a little later (webhooks.py answers
# Telegram 503 for these, so that it delivers the update again).
UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (DBAPIError, OSError, TimeoutError)
