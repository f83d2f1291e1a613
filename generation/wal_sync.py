"""SQLite commits made durable off the event loop's thread, one sync shared by every commit waiting
(or in the loop's thread when the process has nothing else to do).

The event loop's write connection (direct_statements.py, `SqliteLoopWrites`) commits with
`synchronous=NORMAL`: in WAL mode SQLite then writes the transaction's pages to the WAL file and
returns, without the sync of that file (fdatasync: 0.3-0.5 ms on the disks measured) that the default,
FULL, makes inside every COMMIT, and that the loop's thread would sit in while nothing else of the
process runs. `WalSync.durable` syncs the WAL file in a thread instead, and returns once the commit is
on disk: the writer goes on only as it would after a FULL commit. Commits made while a sync runs share
the next one (a group commit): in a burst, one sync serves many generations.

Durability is FULL's: a commit is on disk before its writer acts on it (journals the next step,
sends a photo, answers). SQLite's WAL header, written when the WAL file starts over after a
checkpoint, is synced by SQLite itself under NORMAL too. What differs: another connection may read a
commit in the moment (under a millisecond) before its sync returns, where FULL shows it only after;
a power cut or an OS crash in that moment loses it, as it loses a FULL commit whose sync has not
returned. A crash of the process alone loses nothing: the pages are in the OS's cache. A write of any
other connection syncs the same file, and so every commit before it.
"""

from __future__ import annotations

import asyncio
import os


class WalSync:
    """Counts the commits written to a database's WAL file and syncs them, one sync for all those
    written when it starts."""

    def __init__(self, database_path: str) -> None:
        self._wal = f"{database_path}-wal"
        self._written = 0
        self._synced = 0
        self._syncing: asyncio.Future[None] | None = None

    def written(self) -> None:
        """A commit was just written, not synced yet: `count` is its number, for `durable`."""
        self._written += 1

    @property
    def count(self) -> int:
        return self._written

    async def durable(self, commit: int, *, here: bool = False) -> None:
        """Return once commit number `commit` is on disk: a sync under way that started before it was
        written does not cover it, the next one does. A sync that fails raises here (OSError), in
        every writer waiting on it; the next writer tries again.

        `here`: with no sync under way, sync in the calling thread (the event loop's) rather than hand
        it to a thread. For a process with nothing else to do (store.py, `Database.quiet`): on an idle
        loop an fdatasync took 0.2 ms in its thread and 0.65 ms through the default executor and back
        (0.5-0.7 ms in the loop on the benchmark's WAL file), all of it on the way of the writer's
        next step. With others at work, a thread's sync lets them run meanwhile and serves all the
        commits they write."""
        yielded = False
        while self._synced < commit:
            syncing = self._syncing
            if here and syncing is None:
                if not yielded:
                    # What is ready runs first (a download just started sends its request), so that
                    # the sync overlaps it instead of holding it back.
                    yielded = True
                    await asyncio.sleep(0)
                    continue
                covered = self._written
                sync_file(self._wal)
                self._synced = max(self._synced, covered)
                return
            if syncing is None or syncing.get_loop() is not asyncio.get_running_loop():
                # (A sync of an event loop that is gone: the database outlived a loop, as tests do.)
                syncing = self._syncing = asyncio.ensure_future(self._sync())
            # Shielded: a writer cancelled while it waits leaves the sync to the others.
            await asyncio.shield(syncing)

    async def finish(self) -> None:
        """Wait for a sync under way (the database is closing)."""
        syncing = self._syncing
        if syncing is not None and syncing.get_loop() is asyncio.get_running_loop():
            await asyncio.wait([syncing])

    async def _sync(self) -> None:
        covered = self._written
        try:
            await asyncio.get_running_loop().run_in_executor(None, sync_file, self._wal)
        finally:
            self._syncing = None
        self._synced = max(self._synced, covered)


def sync_file(path: str) -> None:
    """The WAL file's data on disk (fdatasync; fsync where there is none). Syncing a file syncs it
    through any descriptor: SQLite's own writes to it are included. A WAL file that is gone was
    removed by the database's last connection as it closed, once a checkpoint had copied it all into
    the database and synced that: nothing is left to sync."""
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return
    try:
        if hasattr(os, "fdatasync"):
            os.fdatasync(descriptor)
        else:  # pragma: no cover - macOS
            os.fsync(descriptor)
    finally:
        os.close(descriptor)
