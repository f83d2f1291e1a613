"""Telegram updates taken in by webhook: how many this process handles at once."""

from __future__ import annotations


class UpdatesInFlight:
    """A bound on the Telegram updates this process handles at once. Each is answered only once it is
    handled (a generation recorded and charged, or a clear answer sent), so an update Telegram saw
    accepted is never only in memory; past the bound the process refuses, and Telegram delivers the
    update again later, instead of queueing without limit in memory."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.count = 0

    def try_enter(self) -> bool:
        if self.count >= self.limit:
            return False
        self.count += 1
        return True

    def leave(self) -> None:
        self.count -= 1
