"""Requests being accepted go before generations' work in this process.

One process answers requests and runs generations on the same event loop. When a burst of requests
arrives, every accepted generation starts its run at once, and the runs' steps (database writes,
provider calls, uploads) share the loop, the connection pool and SQLite's writer with the requests
still being accepted: the last ones of the burst wait seconds for their answer (a 202, a Telegram
webhook's reply) behind work that could have waited. So a run about to start, on either plan, waits
first until no request is being accepted here; once the burst is in, the runs go on at full speed.

It only reorders work inside one process: the same generations run, as fast in total. A run waits
at most `LONGEST_WAIT` however many requests keep arriving, so accepting never starves running.

Once accepting is over, the runs that waited go on `RELEASED_AT_ONCE` per turn of the event loop, in
the order they came, not all in one turn: each one woken starts its lease's heartbeat and asks for a
place among the runs working at once, and hundreds woken together made a few turns of the loop of
50-100 ms each, in which a newcomer's request waited (in a burst of 400 on PostgreSQL, Plan B, a 202
took 150-430 ms for a few probes in a row just after the burst was in).

Requests are also recorded `ACCEPTING_AT_ONCE` at a time, the others waiting their turn (counted as
being accepted all the same). Hundreds recorded at once made each one's round trips to the database
and Redis wait behind all the others' on the event loop: a burst's enqueues then ran past
REDIS_TIMEOUT although Redis answered in a millisecond, fell back to Plan B and tripped the breaker
(an admin alert that the queue was down), and every answer came later than with a few at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator

# However busy accepting stays, a run starts after this long (seconds).
LONGEST_WAIT = 2.0
# Requests recorded at the same time in one process: enough to keep the accept path's connections on
# PostgreSQL (generation/store.py, INTAKE_POOL_SIZE) and Redis busy, few enough that each one's round
# trips are not queued behind hundreds.
ACCEPTING_AT_ONCE = 16
# Runs let go per turn of the event loop once accepting is over.
RELEASED_AT_ONCE = 16


class IntakeFirst:
    def __init__(self, longest_wait: float = LONGEST_WAIT) -> None:
        self.longest_wait = longest_wait
        self._accepting = 0
        # The runs waiting, in the order they came (a run let go by its longest wait stays here, done,
        # until the release reaches it).
        self._waiting: deque[asyncio.Future[None]] = deque()
        self._releasing: asyncio.Handle | None = None
        self._at_once = asyncio.Semaphore(ACCEPTING_AT_ONCE)

    @property
    def accepting(self) -> int:
        """Requests being accepted now."""
        return self._accepting

    @contextlib.asynccontextmanager
    async def accepting_one(self) -> AsyncIterator[None]:
        """Around accepting one request (record, charge, hand to a plan)."""
        self._accepting += 1
        try:
            async with self._at_once:
                yield
        finally:
            self._accepting -= 1
            if self._accepting == 0:
                self._release_soon()

    @property
    def waiting(self) -> int:
        """Runs waiting for their turn now."""
        return sum(not turn.done() for turn in self._waiting)

    async def wait_turn(self) -> None:
        """Before a run starts: until nothing is being accepted and the runs that waited before it
        have gone on, or `longest_wait` at most."""
        if self._accepting == 0 and not self._waiting:
            return
        loop = asyncio.get_running_loop()
        turn: asyncio.Future[None] = loop.create_future()
        self._waiting.append(turn)
        if self._accepting == 0:  # behind runs being let go now
            self._release_soon()
        timer = loop.call_later(self.longest_wait, _let_go, turn)
        try:
            await turn
        finally:
            timer.cancel()

    def _release_soon(self) -> None:
        if self._releasing is None and self._waiting:
            self._releasing = asyncio.get_running_loop().call_soon(self._release_some)

    def _release_some(self) -> None:
        """Let the next few runs go, and the next few at the loop's next turn, while nothing is
        being accepted (a request that comes meanwhile holds the rest back again)."""
        self._releasing = None
        if self._accepting:
            return
        released = 0
        while self._waiting and released < RELEASED_AT_ONCE:
            turn = self._waiting.popleft()
            if not turn.done():  # not let go by its longest wait, nor cancelled
                turn.set_result(None)
                released += 1
        self._release_soon()


def _let_go(turn: asyncio.Future[None]) -> None:
    if not turn.done():
        turn.set_result(None)
