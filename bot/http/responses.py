"""The JSON answers every route shares: an error, and the list of a request's problems."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler
from loguru import logger
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


@web.middleware
async def unavailable_as_503(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A route that fails because the database does not answer says so (503, Retry-After) instead of
    a 500 that reads as a bug; the client repeats it later, with the same Idempotency-Key."""
    try:
        return await handler(request)
    except UNAVAILABLE_ERRORS as error:
        logger.warning("{} {}: the database or the network failed: {!r}", request.method, request.path, error)
        response = json_error(503, "temporarily unavailable: try again shortly")
        response.headers["Retry-After"] = "5"
        return response
