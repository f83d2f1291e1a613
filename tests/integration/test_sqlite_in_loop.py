"""On a SQLite file the hot path runs in the event loop's thread (generation/direct_statements.py):
reads (`SqliteLoopReads`) at once, with no hand-off to a connection's thread, seeing every commit made
before them; a running generation's writes (`SqliteLoopWrites`) at once, each whole and committed,
an error SQLAlchemy's with its transaction rolled back. What cannot run at once (a lock held by
another process) goes through a connection's thread and waits as every statement does. The WAL file
is checkpointed in a thread, never in the loop."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.exc import IntegrityError

from generation import direct_statements, lifecycle, wal_sync
from generation.direct_statements import Prepared, SqliteLoopReads, SqliteLoopWrites, Trip
from generation.steps import StepJournal
from generation.store import Database, Generation, GenerationStatus, Plan, User
from generation.wal_sync import sync_file as wal_sync_file
from migrations.runner import upgrade
from tests.integration.conftest import Trips

_BALANCE = Prepared(select(User.balance).where(User.id == bindparam("user_id")))
_ADD = Prepared(
    update(User)
    .where(User.id == bindparam("user_id"))
    .values(balance=User.balance + bindparam("stars"))
    .returning(User.balance)
)
_GENERATION = Prepared(
    insert(Generation).values(
        id=bindparam("generation_id"),
        request_key=bindparam("request_key"),
        kind="text_to_image",
        user_id=bindparam("user_id"),
        bot_name="image_bot",
        model="black-forest-labs/flux-schnell",
        plan="B",
        status=GenerationStatus.queued,
        price=2,
        unit_price=2,
        units=1,
        attempts=0,
        failures=0,
        refunded=0,
        request={},
        created_at=datetime(2026, 12, 6, tzinfo=UTC),
    )
)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "aibot.db"


@pytest.fixture
async def db(path: Path) -> AsyncIterator[Database]:
    url = f"sqlite+aiosqlite:///{path}"
    await asyncio.to_thread(upgrade, url)
    database = Database(url)
    yield database
    await database.close()


class Syncs:
    """The WAL file's syncs (generation/wal_sync.py), counted; held or failed on demand."""

    def __init__(self) -> None:
        self.done = 0
        self.begun = 0
        self.threads: list[int] = []  # where each sync ran
        self._gate: threading.Event | None = None
        self._failure: OSError | None = None

    def __call__(self, wal: str) -> None:
        self.begun += 1
        self.threads.append(threading.get_ident())
        if self._gate is not None:
            self._gate.wait(10)
            self._gate.clear()
        failure, self._failure = self._failure, None
        if failure is not None:
            raise failure
        wal_sync_file(wal)
        self.done += 1

    def hold(self) -> None:
        """Each sync from now on waits for `release`."""
        self._gate = threading.Event()

    def release(self) -> None:
        assert self._gate is not None
        self._gate.set()

    def fail_next(self, error: OSError) -> None:
        self._failure = error

    async def started(self, count: int) -> None:
        for _ in range(500):
            if self.begun >= count:
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"{count} syncs did not start")


@pytest.fixture
def syncs(monkeypatch: pytest.MonkeyPatch) -> Syncs:
    counted = Syncs()
    monkeypatch.setattr(wal_sync, "sync_file", counted)
    return counted


async def _user(db: Database, balance: int) -> int:
    async with db.transaction() as session:
        telegram_id = uuid.uuid4().int % 10**9
        user = User(bot_name="image_bot", telegram_id=telegram_id, language="en", balance=balance)
        session.add(user)
        await session.flush()
        return user.id


def _read_elsewhere(path: Path, user_id: int) -> int:
    """The balance as another process reads it."""
    connection = sqlite3.connect(path)
    try:
        return int(connection.execute("SELECT balance FROM users WHERE id = ?", (user_id,)).fetchone()[0])
    finally:
        connection.close()


# --- writes --------------------------------------------------------------------------------------


async def test_a_write_runs_at_once_in_the_loops_thread_and_is_committed(
    db: Database, path: Path, count_sqlite_trips: Callable[[], Trips], syncs: Syncs
) -> None:
    user_id = await _user(db, 10)
    trips = count_sqlite_trips()
    turned: list[bool] = []
    asyncio.get_running_loop().call_soon(turned.append, True)
    async with db.direct_writes() as direct:
        assert isinstance(direct, SqliteLoopWrites)
        [(balance,)] = (await direct.execute(_ADD, {"user_id": user_id, "stars": 5})).rows

        def two_writes(trip: Trip) -> int:
            trip.execute(_ADD, {"user_id": user_id, "stars": 1})
            return int(trip.execute(_ADD, {"user_id": user_id, "stars": 1}).scalar())

        after_trip = await direct.in_one_trip(two_writes)
        assert turned == [] and trips.count == 0  # nothing waited for, no connection's thread asked
        assert syncs.done == 0
    assert syncs.done == 1  # the block's two commits on disk, in one sync, before it ended
    assert (balance, after_trip) == (15, 17)
    assert _read_elsewhere(path, user_id) == 17  # committed: another process sees it


async def test_a_block_ends_once_its_commits_are_synced_and_blocks_share_syncs(
    db: Database, syncs: Syncs
) -> None:
    user_id = await _user(db, 0)
    syncs.hold()

    async def add_one(in_one_trip: bool = False) -> None:
        async with db.direct_writes() as direct:
            if in_one_trip:
                await direct.in_one_trip(lambda trip: trip.execute(_ADD, {"user_id": user_id, "stars": 1}))
            else:
                await direct.execute(_ADD, {"user_id": user_id, "stars": 1})

    first = asyncio.create_task(add_one())
    await syncs.started(1)
    # Written while the first one's sync runs (its turn at the write lock given back): they wait
    # for the next sync, one for the three of them.
    later = [
        asyncio.create_task(add_one()),
        asyncio.create_task(add_one(True)),
        asyncio.create_task(add_one()),
    ]
    await asyncio.sleep(0.05)
    assert not first.done() and not any(task.done() for task in later)
    async with db.direct_reads() as reads:  # each one wrote at once, without waiting for the sync
        assert (await reads.execute(_BALANCE, {"user_id": user_id})).scalar() == 4
    syncs.release()
    await asyncio.wait_for(first, 5)
    await syncs.started(2)
    await asyncio.sleep(0.05)
    assert not any(task.done() for task in later)  # the first sync began before they wrote
    syncs.release()
    await asyncio.wait_for(asyncio.gather(*later), 5)
    assert syncs.done == 2


async def test_a_block_that_changed_nothing_waits_for_no_sync(db: Database, syncs: Syncs) -> None:
    async with db.direct_writes() as direct:
        rows = await direct.execute(_ADD, {"user_id": -1, "stars": 1})  # no such user
        assert await direct.in_one_trip(lambda trip: trip.execute(_BALANCE, {"user_id": -1}).first()) is None
    assert rows.rows == [] and syncs.begun == 0


async def test_a_failed_sync_fails_its_writers_and_the_next_block_syncs_again(
    db: Database, syncs: Syncs
) -> None:
    user_id = await _user(db, 0)
    syncs.fail_next(OSError(5, "Input/output error"))
    with pytest.raises(OSError, match="Input/output error"):
        async with db.direct_writes() as direct:
            await direct.execute(_ADD, {"user_id": user_id, "stars": 1})
    async with db.direct_writes() as direct:
        await direct.execute(_ADD, {"user_id": user_id, "stars": 1})
    assert syncs.done == 1


async def test_a_quiet_process_syncs_in_the_loops_thread_unless_a_sync_is_under_way(
    db: Database, syncs: Syncs
) -> None:
    user_id = await _user(db, 0)
    loop_thread = threading.get_ident()

    async def add_one() -> None:
        async with db.direct_writes() as direct:
            await direct.execute(_ADD, {"user_id": user_id, "stars": 1})

    await add_one()
    assert syncs.threads[-1] != loop_thread  # a busy process (the default): in a thread
    db.quiet = lambda: True
    await add_one()
    assert syncs.threads[-1] == loop_thread  # quiet: the loop syncs itself, no trip to a thread
    db.quiet = lambda: False
    syncs.hold()
    busy = asyncio.create_task(add_one())
    await syncs.started(3)
    db.quiet = lambda: True
    quiet = asyncio.create_task(add_one())  # its commit is not covered by the sync under way
    await asyncio.sleep(0.05)
    assert not quiet.done()
    syncs.release()
    await asyncio.wait_for(busy, 5)
    syncs._gate = None  # the next sync runs in the loop's thread: it must not wait for a release
    await asyncio.wait_for(quiet, 5)
    assert syncs.done == 4 and syncs.threads[-1] == loop_thread
    async with db.direct_reads() as reads:
        assert (await reads.execute(_BALANCE, {"user_id": user_id})).scalar() == 4


async def test_a_quiet_process_records_in_the_loops_thread(
    db: Database, count_sqlite_trips: Callable[[], Trips], syncs: Syncs
) -> None:
    """The accept path's writes (`urgent`) go through a connection's thread, unless nothing else is
    going on: then they run in the loop's thread as a running generation's do."""
    user_id = await _user(db, 0)
    trips = count_sqlite_trips()
    async with db.direct_writes(urgent=True) as direct:
        assert not isinstance(direct, SqliteLoopWrites)
        await direct.execute(_ADD, {"user_id": user_id, "stars": 1})
    assert trips.count == 1 and syncs.begun == 0  # FULL: synced inside its COMMIT, in that thread
    db.quiet = lambda: True
    async with db.direct_writes(urgent=True) as direct:
        assert isinstance(direct, SqliteLoopWrites)
        await direct.in_one_trip(lambda trip: trip.execute(_ADD, {"user_id": user_id, "stars": 1}))
    assert trips.count == 1 and syncs.threads == [threading.get_ident()]
    async with db.direct_reads() as reads:
        assert (await reads.execute(_BALANCE, {"user_id": user_id})).scalar() == 2


async def test_a_block_that_need_not_be_durable_ends_unsynced_and_the_next_sync_covers_it(
    db: Database, path: Path, syncs: Syncs
) -> None:
    user_id = await _user(db, 0)
    async with db.direct_writes(durable=False) as direct:
        await direct.execute(_ADD, {"user_id": user_id, "stars": 1})
    assert syncs.begun == 0
    assert _read_elsewhere(path, user_id) == 1  # committed all the same
    async with db.direct_writes() as direct:
        await direct.execute(_ADD, {"user_id": user_id, "stars": 1})
    assert syncs.done == 1


async def test_a_claim_is_not_waited_on_to_reach_the_disk_and_the_runs_next_journal_write_syncs_it(
    db: Database, path: Path, syncs: Syncs
) -> None:
    """A claim lost to a power cut leaves its generation queued, to be claimed again: a run does not
    wait for its sync. What the run journals next (a provider job's id, before it is awaited) does
    wait, and that sync covers the claim, written before it."""
    user_id = await _user(db, 10)
    generation_id = uuid.uuid4().hex
    async with db.direct_writes() as direct:
        await direct.execute(
            _GENERATION,
            {"generation_id": generation_id, "request_key": f"test:{generation_id}", "user_id": user_id},
        )
    synced_before = syncs.done
    claim = await lifecycle.claim(db, generation_id, Plan.B, "runner-1", lease=30)
    assert claim is not None and claim.generation.status == GenerationStatus.running
    assert syncs.begun == synced_before  # not waited on
    connection = sqlite3.connect(path)  # another process sees it claimed at once
    try:
        assert connection.execute(
            "SELECT status FROM generations WHERE id = ?", (generation_id,)
        ).fetchone() == ("running",)
    finally:
        connection.close()
    await StepJournal(db, generation_id).record("prediction:id", "p1")
    assert syncs.done == synced_before + 1


async def test_an_error_is_sqlalchemys_and_its_transaction_is_rolled_back(db: Database) -> None:
    user_id = await _user(db, 10)
    generation = {"generation_id": uuid.uuid4().hex, "request_key": f"test:{uuid.uuid4().hex}"}

    def charge_and_record(trip: Trip) -> None:
        trip.execute(_ADD, {"user_id": user_id, "stars": -2})
        trip.execute(_GENERATION, {**generation, "user_id": user_id})

    async with db.direct_writes() as direct:
        await direct.in_one_trip(charge_and_record)
        with pytest.raises(IntegrityError):  # the same generation again: its id is taken
            await direct.in_one_trip(charge_and_record)
        with pytest.raises(IntegrityError):  # a statement alone: no such user
            await direct.execute(_GENERATION, {"generation_id": "x1", "request_key": "x1", "user_id": -1})
        # The second charge went with its failed transaction; the connection goes on.
        assert (await direct.execute(_BALANCE, {"user_id": user_id})).scalar() == 8
    async with db.direct_reads() as reads:
        assert (await reads.execute(_BALANCE, {"user_id": user_id})).scalar() == 8


async def test_a_write_that_finds_the_lock_held_elsewhere_waits_for_it(
    db: Database, path: Path, count_sqlite_trips: Callable[[], Trips]
) -> None:
    user_id = await _user(db, 10)
    holder = sqlite3.connect(path, isolation_level=None)  # another process, in a write transaction
    holder.execute("BEGIN IMMEDIATE")
    holder.execute("UPDATE users SET balance = balance + 100 WHERE id = ?", (user_id,))
    try:
        trips = count_sqlite_trips()
        async with db.direct_writes() as direct:
            statement = asyncio.create_task(direct.execute(_ADD, {"user_id": user_id, "stars": 1}))
            trip = asyncio.create_task(
                direct.in_one_trip(lambda trip: trip.execute(_ADD, {"user_id": user_id, "stars": 2}).scalar())
            )
            await asyncio.sleep(0.3)
            # Waiting in connections' threads for the lock: not failed, not blocking the loop.
            assert not statement.done() and not trip.done()
            holder.execute("COMMIT")
            results = {(await asyncio.wait_for(statement, 10)).scalar(), await asyncio.wait_for(trip, 10)}
        assert trips.count >= 2
        assert max(results) == 113 and _read_elsewhere(path, user_id) == 113  # nothing lost
    finally:
        holder.close()


async def test_the_wal_file_is_checkpointed_in_a_thread(
    db: Database, path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(direct_statements, "CHECKPOINT_EVERY", 5)
    checkpoints: list[str] = []
    real = direct_statements._checkpoint

    def checkpoint(where: str) -> None:
        checkpoints.append(where)
        real(where)

    monkeypatch.setattr(direct_statements, "_checkpoint", checkpoint)
    user_id = await _user(db, 0)
    async with db.direct_writes() as direct:
        assert isinstance(direct, SqliteLoopWrites)
        for _ in range(4):
            await direct.execute(_ADD, {"user_id": user_id, "stars": 1})
        assert checkpoints == []
        await direct.execute(_ADD, {"user_id": user_id, "stars": 1})
        await db.close()  # waits for the checkpoint under way
    assert checkpoints == [str(path)]
    connection = sqlite3.connect(path)
    try:
        # Nothing left in the WAL file that is not in the database.
        busy, frames, copied = connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        assert (busy, frames, copied) in ((0, 0, 0), (0, frames, frames))
    finally:
        connection.close()
    assert _read_elsewhere(path, user_id) == 5


# --- reads ---------------------------------------------------------------------------------------


async def test_a_read_runs_at_once_in_the_loops_thread(
    db: Database, count_sqlite_trips: Callable[[], Trips]
) -> None:
    user_id = await _user(db, 42)
    trips = count_sqlite_trips()
    turned: list[bool] = []
    asyncio.get_running_loop().call_soon(turned.append, True)
    async with db.direct_reads() as direct:
        assert isinstance(direct, SqliteLoopReads)
        balance = (await direct.execute(_BALANCE, {"user_id": user_id})).scalar()
        unknown = (await direct.execute(_BALANCE, {"user_id": -1})).rows
    assert (balance, unknown) == (42, [])
    assert turned == []  # the loop never turned: nothing was waited for
    assert trips.count == 0  # no connection's thread was asked


async def test_a_read_sees_every_commit_made_before_it(db: Database) -> None:
    user_id = await _user(db, 0)
    for stars in range(1, 6):
        async with db.direct_writes() as writes:
            await writes.execute(_ADD, {"user_id": user_id, "stars": stars})
        async with db.direct_reads() as reads:
            assert (await reads.execute(_BALANCE, {"user_id": user_id})).scalar() == sum(range(1, stars + 1))


async def test_a_read_that_cannot_run_at_once_waits_as_every_read_does(
    db: Database, path: Path, count_sqlite_trips: Callable[[], Trips]
) -> None:
    user_id = await _user(db, 7)
    # A database left in rollback-journal mode, another process holding its exclusive lock: no other
    # connection may read meanwhile, and the loop's connection waits for nothing.
    await db.close()
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("PRAGMA journal_mode=DELETE")
    holder.execute("BEGIN EXCLUSIVE")
    try:
        async with db.direct_reads() as direct:
            read = asyncio.create_task(direct.execute(_BALANCE, {"user_id": user_id}))
            await asyncio.sleep(0.3)
            assert not read.done()  # waiting in a connection's thread, not failed, not blocking the loop
            holder.execute("ROLLBACK")
            assert (await asyncio.wait_for(read, 10)).scalar() == 7
            # And the loop's own connection serves the next read again.
            trips = count_sqlite_trips()
            assert (await direct.execute(_BALANCE, {"user_id": user_id})).scalar() == 7
            assert trips.count == 0
    finally:
        holder.close()


async def test_the_loops_connection_writes_nothing(db: Database) -> None:
    user_id = await _user(db, 3)
    async with db.direct_reads() as direct:
        assert isinstance(direct, SqliteLoopReads)
        # Sent here by mistake, a write is not made on the read connection: it goes the usual way,
        # on a read connection that begins no transaction, and commits by itself.
        await direct.execute(_ADD, {"user_id": user_id, "stars": 1})
        assert (await direct.execute(_BALANCE, {"user_id": user_id})).scalar() == 4


async def test_closing_the_database_closes_the_loops_connection_and_a_later_read_opens_one(
    db: Database,
) -> None:
    user_id = await _user(db, 5)
    async with db.direct_reads() as direct:
        assert (await direct.execute(_BALANCE, {"user_id": user_id})).scalar() == 5
    await db.close()
    async with db.direct_reads() as direct:
        assert (await direct.execute(_BALANCE, {"user_id": user_id})).scalar() == 5


def test_an_in_memory_database_keeps_its_reads_on_the_engine() -> None:
    database = Database("sqlite+aiosqlite:///:memory:")
    assert not isinstance(database._direct_reads, SqliteLoopReads)
