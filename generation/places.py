"""Places that a few at a time may hold: SQLite's one writer of a process (generation/store.py), the
runs working at once on Plan B (fallback/inline.py, sized by generation/pace.py).

A place given back goes straight to the next waiter, those asking `first` before the others, then in
the order they asked. A waiter cancelled before its turn is skipped; one cancelled just as the place
was handed to it passes the place on. The number of places can change (`resize`): more hand places to
waiters at once, fewer take none back (holders keep theirs until they give them back).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager


class Places:
    def __init__(self, size: int) -> None:
        self.size = size
        self.taken = 0
        # Told whenever a place is asked for (generation/pace.py keeps the loop's time from then on).
        self.on_demand: Callable[[], None] | None = None
        # Tickets of those waiting, by priority then arrival. A cancelled waiter's ticket stays until
        # a hand-over reaches it; tickets are left only while every place is taken, so a place given
        # back always finds who to go to.
        self._waiting: list[tuple[int, int, asyncio.Future[None]]] = []
        self._arrivals = itertools.count()
        self._waiters = 0

    @property
    def waiting(self) -> int:
        """How many wait for a place now."""
        return self._waiters

    def resize(self, size: int) -> None:
        self.size = size
        self._hand_over()

    async def take(self, first: bool = False) -> None:
        """A place, waiting for one if none is free (or others already wait)."""
        if self.on_demand is not None:
            self.on_demand()
        if self.taken < self.size and not self._waiting:
            self.taken += 1
            return
        ticket = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiting, (0 if first else 1, next(self._arrivals), ticket))
        self._waiters += 1
        try:
            await ticket
        except asyncio.CancelledError:
            if ticket.done() and not ticket.cancelled():
                self.give_back()  # it was handed over just now: pass it on
            raise
        finally:
            self._waiters -= 1

    def give_back(self) -> None:
        self.taken -= 1
        self._hand_over()

    def _hand_over(self) -> None:
        while self.taken < self.size and self._waiting:
            _, _, ticket = heapq.heappop(self._waiting)
            if not ticket.done():
                self.taken += 1
                ticket.set_result(None)  # the place passes straight to this waiter

    @asynccontextmanager
    async def held(self, first: bool = False) -> AsyncIterator[None]:
        await self.take(first)
        try:
            yield
        finally:
            self.give_back()


class Place:
    """One holder's place (`async with`), which it can give up for a while (`given_up`) and take back
    before those that never had one. Given back once, however the holder ends."""

    def __init__(self, places: Places) -> None:
        self._places = places
        self._held = False

    async def __aenter__(self) -> Place:
        await self._places.take()
        self._held = True
        return self

    async def __aexit__(self, *_: object) -> None:
        self._give_back()

    @asynccontextmanager
    async def given_up(self) -> AsyncIterator[None]:
        """The place is given up meanwhile and taken back after, unless what was done meanwhile
        raised (a cancelled run does not wait for a place only to unwind)."""
        self._give_back()
        yield
        await self._places.take(first=True)  # cancelled meanwhile: not held, not given back
        self._held = True

    def _give_back(self) -> None:
        if self._held:
            self._held = False
            self._places.give_back()
