"""Telegram updates handled a few at a time in a process, each in its turn.

A process holds up to `updates_in_flight` updates at once (Telegram's webhook connections, or a polling
batch). Handled all at once, each one's steps wait behind every other's on the event loop, and so does
anything else the process answers meanwhile. In bench/hot_path.py's bursts of 400 updates, an HTTP
API request sent while the updates came in waited 136-174 ms (p50) for its 202 on PostgreSQL and
380-500 on SQLite, against 40-42 and 77-104 with 8 updates handled at once (two runs of each, Plan B).
The loop is as busy either way, so about as many updates are handled per second.

An update waits for one of `HANDLED_AT_ONCE` turns before it is handled, payments before the rest
(Telegram wants a pre-checkout query answered within seconds, and a payment received is money to
credit). A turn is for work, not for waiting: one held longer than `TURN_MOST` (a handler waiting on a
download, on Telegram's flood control, on a database slow to answer) passes to the next update while
its holder goes on, so a few slow updates never hold up the rest for longer than that.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from aiogram import Bot, Dispatcher
from aiogram.types import Update

from generation.places import Places

# Updates handled at once in a process: enough to keep the database and Telegram busy while one waits
# for them, few enough that each one's steps do not queue behind dozens of others on the event loop.
HANDLED_AT_ONCE = 8
# Seconds a turn lasts at most; an update's own work takes a few milliseconds of it.
TURN_MOST = 0.5


class Turns:
    def __init__(self, at_once: int = HANDLED_AT_ONCE, longest: float = TURN_MOST) -> None:
        self.places = Places(at_once)
        self.longest = longest

    def in_flight(self) -> int:
        """Updates being handled or waiting for their turn."""
        return self.places.taken + self.places.waiting

    @asynccontextmanager
    async def turn(self, first: bool = False) -> AsyncIterator[None]:
        """Hold a turn, waited for (`first`: before those that are not) and given back at the end, or
        after `longest` seconds if that comes first."""
        await self.places.take(first)
        given_back = False

        def give_back() -> None:
            nonlocal given_back
            if not given_back:
                given_back = True
                self.places.give_back()

        expiry = asyncio.get_running_loop().call_later(self.longest, give_back)
        try:
            yield
        finally:
            expiry.cancel()
            give_back()


def is_payment(update: Update) -> bool:
    return update.pre_checkout_query is not None or (
        update.message is not None and update.message.successful_payment is not None
    )


class TurnTakingDispatcher(Dispatcher):
    """aiogram's Dispatcher, each update fed to it (from a webhook, polling or the web chat) handled in
    its turn: before every middleware, so that the conversation state's read waits for it too."""

    def __init__(self, *, turns: Turns, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.turns = turns

    async def feed_update(self, bot: Bot, update: Update, **kwargs: Any) -> Any:
        async with self.turns.turn(first=is_payment(update)):
            return await super().feed_update(bot, update, **kwargs)
