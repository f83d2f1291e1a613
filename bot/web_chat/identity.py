"""Who a browser is: a user id of its own, kept in a signed cookie (HttpOnly, SameSite=Strict), so each
browser is one user with its own balance and history, and no page can act as another browser."""

from __future__ import annotations

import hashlib
import hmac
import secrets

from aiohttp import web

COOKIE = "aibot_web_chat"
# Above every Telegram user id (they are below 2^40 today) and within 2^52, where ids stay exact in
# JavaScript and in the Bot API's 52-bit ids: a browser's user can never be a Telegram user's.
FIRST_ID = 2**50
LAST_ID = 2**52 - 1
YEAR = 365 * 24 * 3600


class Identities:
    def __init__(self, key: bytes) -> None:
        self._key = key

    def user_id(self, request: web.Request) -> int | None:
        """The id the request's cookie carries, if the cookie is one this server signed."""
        value = request.cookies.get(COOKIE, "")
        user_id, _, signature = value.partition(".")
        if not user_id.isdigit() or not hmac.compare_digest(signature, self._sign(user_id)):
            return None
        number = int(user_id)
        return number if FIRST_ID <= number <= LAST_ID else None

    def issue(self, request: web.Request, response: web.StreamResponse) -> int:
        """A new user for a browser that has none (or an unreadable cookie)."""
        user_id = FIRST_ID + secrets.randbelow(LAST_ID - FIRST_ID + 1)
        response.set_cookie(
            COOKIE,
            f"{user_id}.{self._sign(str(user_id))}",
            max_age=YEAR,
            path="/chat",
            httponly=True,
            samesite="Strict",
            secure=request.secure,
        )
        return user_id

    def _sign(self, user_id: str) -> str:
        return hmac.new(self._key, f"web-chat-user:{user_id}".encode(), hashlib.sha256).hexdigest()
