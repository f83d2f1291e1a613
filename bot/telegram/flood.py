"""Anti-flood at the door: at most `flood_limit` requests per user of a bot in `flood_window` seconds.

Runs on every update before any handler (nothing is recorded, charged or called for a refused one).
Messages and button presses count; payments never do (a pre-checkout query must be answered within
seconds, and a successful payment must be credited whatever the pace). Someone over the limit is told
"slow down" once per spell of refusals, not once per message.

The window is per process (several `aibot run` processes each allow the limit): enough to keep one
user from flooding the bot and the providers, with no Redis round trip on every update. Memory stays
bounded: a user idle for a whole window is forgotten.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiogram import BaseMiddleware, Bot
from aiogram.exceptions import TelegramAPIError
from aiogram.types import TelegramObject, Update
from loguru import logger

from generation.services import Services
from generation.texts import count_of, language_from_code, text
from generation.users import find_user

UserKey = tuple[int, int]  # (bot id, Telegram user id)


@dataclass
class _Window:
    moments: deque[float] = field(default_factory=deque)  # admitted requests, oldest first
    last_seen: float = 0.0
    told_until: float = 0.0  # the user was told to slow down; not again before this moment
    media_group: str | None = None  # the album being received: its messages count once


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    retry_after: float = 0.0  # seconds until a request would be admitted again
    tell: bool = False  # the first refusal of this spell: say "slow down"


class FloodLimiter:
    """A sliding window per user: `limit` admitted requests in any `window` seconds."""

    def __init__(
        self,
        limit: int,
        window: float,
        *,
        max_users: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self.window = window
        self.max_users = max_users
        self.clock = clock
        self.refused = 0  # requests refused since start (for tests and logs)
        self._windows: OrderedDict[UserKey, _Window] = OrderedDict()  # least recently seen first

    def __len__(self) -> int:
        return len(self._windows)

    def check(self, user: UserKey, media_group: str | None = None) -> Verdict:
        """Admit (and count) a request, or refuse it with the seconds to wait."""
        now = self.clock()
        self._forget_idle(now)
        entry = self._windows.get(user)
        if entry is None:
            entry = self._windows[user] = _Window()
        self._windows.move_to_end(user)
        entry.last_seen = now
        if media_group is not None and media_group == entry.media_group:
            return Verdict(allowed=True)  # another photo of an album already admitted
        moments = entry.moments
        while moments and moments[0] <= now - self.window:
            moments.popleft()
        if len(moments) < self.limit:
            moments.append(now)
            entry.media_group = media_group
            return Verdict(allowed=True)
        self.refused += 1
        retry_after = moments[0] + self.window - now
        tell = now >= entry.told_until
        if tell:
            entry.told_until = moments[0] + self.window
        return Verdict(allowed=False, retry_after=retry_after, tell=tell)

    def _forget_idle(self, now: float) -> None:
        """Drop users not seen for a whole window (they are at the front), and the least recently
        seen beyond `max_users` (a flood of distinct users must not grow memory without end)."""
        windows = self._windows
        while windows:
            oldest_key = next(iter(windows))
            oldest = windows[oldest_key]
            idle = oldest.last_seen <= now - self.window and oldest.told_until <= now
            if not idle and len(windows) < self.max_users:
                break
            del windows[oldest_key]


class FloodMiddleware(BaseMiddleware):
    """An outer middleware on the dispatcher's updates: refused updates reach no handler."""

    def __init__(self, services: Services, bot_names: dict[int, str], limiter: FloodLimiter) -> None:
        self.services = services
        self.bot_names = bot_names
        self.limiter = limiter

    async def __call__(
        self,
        handler: Callable[[TelegramObject, dict[str, Any]], Awaitable[Any]],
        event: TelegramObject,
        data: dict[str, Any],
    ) -> Any:
        if not isinstance(event, Update):
            return await handler(event, data)
        message, query = event.message, event.callback_query
        if message is not None:
            if message.successful_payment is not None or message.refunded_payment is not None:
                return await handler(event, data)
            sender, media_group = message.from_user, message.media_group_id
        elif query is not None:
            sender, media_group = query.from_user, None
        else:  # pre_checkout_query and anything else: never throttled
            return await handler(event, data)
        bot: Bot | None = data.get("bot")
        if sender is None or sender.is_bot or bot is None:
            return await handler(event, data)
        verdict = self.limiter.check((bot.id, sender.id), media_group)
        if verdict.allowed:
            return await handler(event, data)
        logger.bind(user=sender.id).info("flood: update refused, {:.1f} s to wait", verdict.retry_after)
        notice = None
        if verdict.tell:
            language = await self._language(bot, sender.id, sender.language_code)
            wait = count_of(max(1, math.ceil(verdict.retry_after)), "second_accusative", language)
            notice = text("journey_slow_down", language, wait=wait)
        try:
            if query is not None:
                # A button press is answered anyway (it stops the button's spinner); the notice once.
                await bot.answer_callback_query(query.id, text=notice)
            elif notice is not None and message is not None:
                await bot.send_message(message.chat.id, notice)
        except TelegramAPIError as error:
            logger.bind(user=sender.id).info("flood: could not tell the user: {}", error.message)
        return None

    async def _language(self, bot: Bot, telegram_id: int, language_code: str | None) -> str:
        """The user's chosen language (/lang), else Telegram's."""
        bot_name = self.bot_names.get(bot.id)
        if bot_name is not None:
            try:
                async with self.services.db.sessions() as session:
                    user = await find_user(session, bot_name, telegram_id)
                if user is not None:
                    return user.language
            except Exception as error:  # the notice is a courtesy: never fail on it
                logger.warning("flood: could not read the user's language: {!r}", error)
        return language_from_code(language_code)
