"""How many runs work at once in this process, set by how late its event loop answers.

One process answers requests and runs generations on the same event loop. When hundreds of runs
work at once, every turn of the loop goes through all of their steps, and a request arriving then
(a 202, a Telegram webhook's reply, /healthz) waits that long at each of its own round trips: in a
burst of 400 on PostgreSQL a newcomer's 202 took 0.34-0.44 s at the median and up to 3.5 s, though
the database answered in a millisecond.

A fixed number of runs would not do: with instant providers a few dozen fill the CPU, while with real
ones a run mostly waits on the network, and hundreds at once cost the loop nothing. So the number
follows the loop itself (as a congestion window follows a network): a timer asks to be called every
`EVERY` seconds, and how late it is called is how long a turn of the loop takes now. Late by more
than `LATE` (a few runs' steps): a quarter fewer places, at most every `CUT_EVERY` (runs holding one
keep it; the cut shows as they finish). On time while runs wait for a place: an eighth more. The
timer runs only while runs hold or wait for places.

It starts small (`FIRST`), as a congestion window does: runs that wait on the network grow it by an
eighth every tick they keep the loop on time (8 to 32 in about 0.12 s), while a start at 32 took
0.3-0.4 s of cuts to come down when the runs were all CPU: in a burst of 400 on SQLite (Plan B, instant
providers), the runs let go once the burst was in made turns of the loop so long that a newcomer's
202 took 138-261 ms at worst, against 67-106 ms starting at 8.
"""

from __future__ import annotations

import asyncio

from generation.places import Places

EVERY = 0.01
LATE = 0.005
CUT_EVERY = 0.1
FEWEST = 4
FIRST = 8


class Pace:
    def __init__(self, places: Places, most: int, fewest: int = FEWEST) -> None:
        self.places = places
        self.most = max(most, fewest)
        self.fewest = fewest
        self._timer: asyncio.TimerHandle | None = None
        self._due = 0.0
        self._next_cut = 0.0
        places.on_demand = self.watch

    def watch(self) -> None:
        """A place is asked for: keep the loop's time from now on (until none is held or waited for)."""
        if self._timer is None:
            self._schedule(asyncio.get_running_loop())

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        self._due = loop.time() + EVERY
        self._timer = loop.call_at(self._due, self._tick, loop)

    def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        now = loop.time()
        self.adjust(now - self._due, now)
        places = self.places
        if places.taken or places.waiting:
            self._schedule(loop)
        else:
            self._timer = None

    def adjust(self, lateness: float, now: float) -> None:
        """One reading: the timer came `lateness` seconds after it was due, at `now`."""
        places = self.places
        if lateness > LATE:
            if now >= self._next_cut and places.size > self.fewest:
                places.resize(max(self.fewest, places.size * 3 // 4))
                self._next_cut = now + CUT_EVERY
        elif lateness < LATE / 2 and places.waiting and places.size < self.most:
            places.resize(min(self.most, places.size + max(1, places.size // 8)))
