"""The JSON answers every route shares: an error, and the list of a request's problems."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler
from loguru import logger
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from generation.requests import Problem


def json_error(status: int, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status)


def json_problems(found: list[Problem]) -> web.Response:
    # SPEC §2.3: a 422 answers a JSON list of what is wrong.
    return web.json_response([problem.as_json() for problem in found], status=422)


@web.middleware
async def refusals_as_json(request: web.Request, handler: Handler) -> web.StreamResponse:
    """aiohttp's own refusals (no route for the path, a method the route does not take, a body over
    client_max_size) answer JSON too, as every other refusal does: a client reads each 4xx one way."""
    try:
        return await handler(request)
    except web.HTTPException as refusal:
        if refusal.status < 400:
            raise
        kept = {name: value for name, value in refusal.headers.items() if name.lower() not in _BODY_HEADERS}
        return web.json_response(
            {"error": refusal.text or refusal.reason}, status=refusal.status, headers=kept
        )


_BODY_HEADERS = {"content-type", "content-length"}


# The database or the network had a bad moment: nothing was recorded or charged (the record and the
# charge are one transaction), and the same request may succeed a little later (webhooks.py answers
# Telegram 503 for these, so that it delivers the update again).
UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (DBAPIError, OSError, TimeoutError)
# SQLSTATE classes that pass: connection (08), a rolled-back transaction (40: serialization failure,
# deadlock), resources (53), operator intervention (57: shutting down), system (58). Any other code is
# the statement's own fault (22 data, 23 integrity, 42 syntax) and fails again on every repeat.
_PASSING_SQLSTATE_CLASSES = frozenset({"08", "40", "53", "57", "58"})


def is_unavailable(error: BaseException) -> bool:
    """Whether `error` is a bad moment of the database or the network that a repeat may not meet,
    rather than something the request itself causes (a NUL byte PostgreSQL cannot store, say)."""
    if not isinstance(error, UNAVAILABLE_ERRORS):
        return False
    if not isinstance(error, DBAPIError) or error.connection_invalidated:
        return True
    if isinstance(error, OperationalError | InterfaceError):
        return True
    sqlstate = getattr(error.orig, "sqlstate", None)
    # No code (SQLite, a driver that gives none): counted as passing, as before codes were read.
    return not isinstance(sqlstate, str) or sqlstate[:2] in _PASSING_SQLSTATE_CLASSES


@web.middleware
async def unavailable_as_503(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A route that fails because the database does not answer says so (503, Retry-After) instead of
    a 500 that reads as a bug; the client repeats it later, with the same Idempotency-Key."""
    try:
        return await handler(request)
    except UNAVAILABLE_ERRORS as error:
        if not is_unavailable(error):
            raise
        logger.warning("{} {}: the database or the network failed: {!r}", request.method, request.path, error)
        response = json_error(503, "temporarily unavailable: try again shortly")
        response.headers["Retry-After"] = "5"
        return response
