"""How a runner stops (both plans): it takes no new work, lets running generations finish until the
drain is over (DRAIN_TIMEOUT, or sooner when a second signal cuts it short), then interrupts the rest.

An interrupted generation is cancelled once, never twice: a paid provider call in progress finishes
and is journaled first (generation/steps.py runs paid calls shielded, and a second cancellation would
cut through the shield), and its runner then gives the lease back so that another runner (or the
next start) takes the generation over at once instead of after the lease expires.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")

# Interrupted work's time to finish a paid call in progress, journal it and give its lease back.
INTERRUPT_WITHIN = 3.0
# One closing step's time once the work is over (a worker, a server, a connection pool, a session).
CLOSE_WITHIN = 2.0
# How often interrupting looks again for work that started meanwhile (a job past arq's bookkeeping).
LOOK_AGAIN_EVERY = 0.05


@dataclass
class Drain:
    """The time running work still has once its process stops taking new work."""

    until: float  # on the event loop's clock
    cut_short: asyncio.Event = field(default_factory=asyncio.Event)

    @classmethod
    def lasting(cls, seconds: float, cut_short: asyncio.Event | None = None) -> Drain:
        until = asyncio.get_running_loop().time() + max(0.0, seconds)
        return cls(until, cut_short if cut_short is not None else asyncio.Event())

    def left(self) -> float:
        if self.cut_short.is_set():
            return 0.0
        return max(0.0, self.until - asyncio.get_running_loop().time())

    async def wait(self, work: Callable[[], Collection[asyncio.Future[Any]]]) -> None:
        """Wait until no work is left or the drain is over. `work` is asked again whenever a piece
        ends: more may have started meanwhile (a request that was already being handled)."""
        cut = asyncio.ensure_future(self.cut_short.wait())
        try:
            while (running := _unfinished(work())) and self.left() > 0:
                await asyncio.wait([*running, cut], timeout=self.left(), return_when=asyncio.FIRST_COMPLETED)
        finally:
            cut.cancel()


async def interrupt(
    running: Callable[[], Collection[asyncio.Future[Any]]],
    to_cancel: Callable[[], Collection[asyncio.Future[Any]]] | None = None,
    within: float = INTERRUPT_WITHIN,
) -> list[asyncio.Future[Any]]:
    """Cancel each piece of work once and wait up to `within` seconds for the `running` ones to end;
    answers those still running then. `to_cancel` (by default the running ones themselves) is what to
    cancel when that differs from what to wait for: arq's job function inside its bookkeeping task."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    cancelled: set[asyncio.Future[Any]] = set()
    while True:
        for piece in _unfinished((to_cancel or running)()):
            if piece not in cancelled:
                piece.cancel()
                cancelled.add(piece)
        still = _unfinished(running())
        left = deadline - loop.time()
        if not still or left <= 0:
            return still
        await asyncio.wait(still, timeout=min(left, LOOK_AGAIN_EVERY), return_when=asyncio.FIRST_COMPLETED)


async def within(seconds: float, work: Awaitable[T]) -> T:
    """Await `work` for at most `seconds`; past that it is cancelled, left to end on its own, and
    TimeoutError raised. (asyncio.wait_for would wait for the cancelled work to end, which work that
    finishes a paid call first may not do in time.)"""
    task = asyncio.ensure_future(work)
    try:
        done, _ = await asyncio.wait([task], timeout=seconds)
    except asyncio.CancelledError:
        task.cancel()
        raise
    if not done:
        task.cancel()
        raise TimeoutError
    return task.result()


def _unfinished(work: Collection[asyncio.Future[Any]]) -> list[asyncio.Future[Any]]:
    return [piece for piece in work if not piece.done()]
