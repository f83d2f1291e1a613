"""Reading an API request's JSON body without trusting it (SPEC §4.6: no input gets a 5xx).

`json.loads` fails in ways of its own besides a syntax error: a body nested a thousand deep raises
RecursionError, an integer of more than 4,300 digits raises ValueError, and `NaN` or `Infinity` pass as
numbers although JSON has none. Each is a problem of the request here, answered with a 422.
"""

from __future__ import annotations

import json
import math
from typing import Any

from aiohttp import web

from generation.requests import Problem

# The longest number a request has any use for: a Telegram id has 16 digits at most. Longer ones are
# refused before int() spends time on them.
MAX_NUMBER_LENGTH = 32


class UnreadableBody(Exception):
    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.problem = Problem("body", "invalid", {"detail": detail})


async def read_json_object(request: web.Request) -> dict[str, Any]:
    """The body as a JSON object, or UnreadableBody. A body over the app's client_max_size raises
    aiohttp's HTTPRequestEntityTooLarge, which answers 413."""
    raw = await request.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise UnreadableBody("the body is not UTF-8 text") from None
    return parse_json_object(text)


def parse_json_object(text: str) -> dict[str, Any]:
    """A JSON object read from `text` within the bounds above, or UnreadableBody."""
    try:
        body = json.loads(
            text, parse_int=_bounded_int, parse_float=_finite_float, parse_constant=_no_constant
        )
    except json.JSONDecodeError as error:
        raise UnreadableBody(f"the body is not valid JSON ({error.msg} at {error.pos})") from None
    except RecursionError:
        # The C decoder counts its depth and raises cleanly; nothing of the request nests at all.
        raise UnreadableBody("the body is nested too deeply") from None
    if not isinstance(body, dict):
        raise UnreadableBody("the body must be a JSON object")
    return body


def _bounded_int(digits: str) -> int:
    if len(digits) > MAX_NUMBER_LENGTH:
        raise UnreadableBody(f"a number in the body has more than {MAX_NUMBER_LENGTH} digits")
    return int(digits)


def _finite_float(digits: str) -> float:
    value = float(digits)
    if not math.isfinite(value):
        raise UnreadableBody("a number in the body is out of range")
    return value


def _no_constant(name: str) -> Any:
    raise UnreadableBody(f"the body is not valid JSON ({name} is not a JSON value)")
