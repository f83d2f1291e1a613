"""Requests being accepted go before generations' work in this process.

One process answers requests and runs generations on the same event loop. When a burst of requests
arrives, every accepted generation starts its run at once, and the runs' steps (database writes,
provider calls, uploads) share the loop, the connection pool and SQLite's writer with the requests
still being accepted: the last ones of the burst wait seconds for their answer (a 202, a Telegram
webhook's reply) behind work that could have waited. So a run about to start, on either plan, waits
first until no request is being accepted here; once the burst is in, the runs go on at full speed.

It only reorders work inside one process: the same generations run, as fast in total. A run waits
at most `LONGEST_WAIT` however many requests keep arriving, so accepting never starves running.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

# However busy accepting stays, a run starts after this long (seconds).
LONGEST_WAIT = 2.0


class IntakeFirst:
    def __init__(self, longest_wait: float = LONGEST_WAIT) -> None:
        self.longest_wait = longest_wait
        self._accepting = 0
        self._quiet = asyncio.Event()
        self._quiet.set()

    @property
    def accepting(self) -> int:
        """Requests being accepted now."""
        return self._accepting

    @contextlib.contextmanager
    def accepting_one(self) -> Iterator[None]:
        """Around accepting one request (validate, record, charge, hand to a plan)."""
        self._accepting += 1
        self._quiet.clear()
        try:
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
