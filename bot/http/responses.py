"""The JSON answers every route shares: an error, and the list of a request's problems."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from generation.requests import Problem


def json_error(status: int, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status)


def json_problems(found: list[Problem]) -> web.Response:
    # SPEC §2.3: a 422 answers a JSON list of what is wrong.
    return web.json_response([problem.as_json() for problem in found], status=422)
