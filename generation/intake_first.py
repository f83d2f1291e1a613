"""Requests being accepted go before generations' work in this process.

One process answers requests and runs generations on the same event loop. When a burst of requests
arrives, every accepted generation starts its run at once, and the runs' steps (database writes,
provider calls, uploads) share the loop, the connection pool and SQLite's writer with the requests
still being accepted: the last ones of the burst wait seconds for their answer (a 202, a Telegram
webhook's reply) behind work that could have waited. So a run about to start, on either plan, waits
first until no request is being accepted here; once the burst is in, the runs go on at full speed.

It only reorders work inside one process: the same generations run, as fast in total. A run waits
at most `LONGEST_WAIT` however many requests keep arriving, so accepting never starves running.

Requests are also recorded `ACCEPTING_AT_ONCE` at a time, the others waiting their turn (counted as
being accepted all the same). Hundreds recorded at once made each one's round trips to the database
and Redis wait behind all the others' on the event loop: a burst's enqueues then ran past
REDIS_TIMEOUT although Redis answered in a millisecond, fell back to Plan B and tripped the breaker
(an admin alert that the queue was down), and every answer came later than with a few at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

# However busy accepting stays, a run starts after this long (seconds).
LONGEST_WAIT = 2.0
# Requests recorded at the same time in one process: enough to keep a connection pool (10 + 10 on
# PostgreSQL) and Redis busy, few enough that each one's round trips are not queued behind hundreds.
ACCEPTING_AT_ONCE = 16


class IntakeFirst:
    def __init__(self, longest_wait: float = LONGEST_WAIT) -> None:
        self.longest_wait = longest_wait
        self._accepting = 0
        self._quiet = asyncio.Event()
        self._quiet.set()
        self._at_once = asyncio.Semaphore(ACCEPTING_AT_ONCE)

    @property
    def accepting(self) -> int:
        """Requests being accepted now."""
        return self._accepting

    @contextlib.asynccontextmanager
    async def accepting_one(self) -> AsyncIterator[None]:
        """Around accepting one request (record, charge, hand to a plan)."""
        self._accepting += 1
        self._quiet.clear()
        try:
            async with self._at_once:
                yield
        finally:
            self._accepting -= 1
            if self._accepting == 0:
                self._quiet.set()

    async def wait_turn(self) -> None:
        """Before a run starts: until nothing is being accepted, or `longest_wait` at most."""
        if self._quiet.is_set():
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._quiet.wait(), self.longest_wait)
