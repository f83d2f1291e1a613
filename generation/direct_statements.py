"""The hot path's statements run on the database driver's connection, past SQLAlchemy's execution.

A statement run the usual way (`AsyncConnection.execute`) pays for SQLAlchemy's work around it on
every call: a Connection object, the connection's isolation level set and reset, an execution
context, the cache key looked up, parameters and rows processed one by one. On PostgreSQL that was
0.45-0.52 ms of CPU per read of a generation by its id, where the same statement sent through
SQLAlchemy's own DBAPI adapter, on a connection from the same pool, took 0.15 ms (measured in one
process, 3,000 reads each way, alternating). A generation runs about ten such statements.

So a statement of the hot path is built once with bound parameters and wrapped in `Prepared`; it is
compiled once per database (its SQL, the order of its parameters, how each parameter and each column
of its rows is converted), and `Direct` runs it in one trip through the pool: a connection checked
out, the statement executed on SQLAlchemy's adapter of the driver (asyncpg, aiosqlite), the rows
converted, the connection checked in. Each statement is its own transaction (autocommit), as
`Database.reads` and `Database.one_statement` always were. What the driver raises is translated as
SQLAlchemy translates it (an `IntegrityError`, an `OperationalError`...), and a connection found dead
is invalidated, so a caller sees the same errors either way.

Statements inside a transaction (an ORM session) still run through SQLAlchemy: `run` takes either.

On a SQLite file the hot path's reads, and a running generation's writes, run in the event loop's
own thread (`SqliteLoopReads`, `SqliteLoopWrites`): a point lookup takes tens of microseconds there
and a write little more than its commit, where the hand-off to a connection's thread and back cost
more CPU than the statement and, worse, waited for the loop's next turn to resume: in a burst of 400
generations, turns of 12-50 ms (a newcomer's read of its user waited 108 ms). Their commits are
synced in a thread, several at once (generation/wal_sync.py), or by the loop itself when the process
has nothing else to do (store.py, `Database.quiet`).

On SQLite a transaction of the hot path (the record and its charge, a claim, the delivery's mark, a
settle) is a small function of `Prepared` statements instead: `Direct.in_one_trip` runs it in the
connection's own thread, BEGIN IMMEDIATE to COMMIT, in ONE hand-off to that thread (`Trip`), where
a session makes one per statement and one more to commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from loguru import logger
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import ArgumentError, DBAPIError, MultipleResultsFound, NoResultFound, StatementError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.dml import UpdateBase
from sqlalchemy.sql.selectable import Select
from sqlalchemy.types import TypeEngine
from sqlalchemy.util.concurrency import await_only, greenlet_spawn

from generation.sqlite_connections import run_in_one_transaction
from generation.wal_sync import WalSync

Converter = Callable[[Any], Any] | None
T = TypeVar("T")


@dataclass
class _Compiled:
    sql: str
    names: tuple[str, ...]  # the parameters, in their order in `sql`
    defaults: dict[str, Any]  # values bound in the statement itself
    required: frozenset[str]  # the parameters with no value of their own: the caller gives them
    to_database: tuple[Converter, ...]  # per parameter
    types: tuple[TypeEngine[Any], ...]  # per column of the rows
    # Per column of the rows; known once the driver has described them (a float's conversion
    # depends on the type the database answers with), as SQLAlchemy does.
    from_database: tuple[Converter, ...] | None = None


class Prepared:
    """A statement built once, with bound parameters (`bindparam`), for `Direct` and `run`. Each is
    compiled when first run on a database; `every_prepared` lists them all, for a test to compile them
    beforehand on each database."""

    def __init__(self, statement: Select[*tuple[Any, ...]] | UpdateBase, *, only: str | None = None) -> None:
        """`only`: the one database the statement is written for ("postgresql", "sqlite")."""
        self.statement = statement
        self.only = only
        self._compiled: dict[str, _Compiled] = {}
        _EVERY_PREPARED.add(self)

    def compiled(self, dialect: Dialect) -> _Compiled:
        compiled = self._compiled.get(dialect.name)
        if compiled is None:
            if self.only not in (None, dialect.name):
                raise ValueError(f"a statement for {self.only}, not {dialect.name}")
            compiled = self._compiled[dialect.name] = _compile(self.statement, dialect)
        return compiled


_EVERY_PREPARED: weakref.WeakSet[Prepared] = weakref.WeakSet()


def every_prepared() -> list[Prepared]:
    return list(_EVERY_PREPARED)


def _compile(statement: Select[*tuple[Any, ...]] | UpdateBase, dialect: Dialect) -> _Compiled:
    compiled = statement.compile(dialect=dialect)
    names = tuple(compiled.positiontup or ())  # a parameter used twice may come twice (SQLite's `?`)
    binds = compiled.binds
    if not dialect.positional or "POSTCOMPILE" in compiled.string or not set(names) <= set(binds):
        # An expanding IN list is rendered at each execution, by SQLAlchemy's own means.
        raise ValueError(f"not a statement of fixed shape: {compiled.string[:80]!r}")
    types = [column.type for column in statement.exported_columns]  # a SELECT's, or what DML returns
    return _Compiled(
        sql=compiled.string,
        names=names,
        defaults={name: binds[name].value for name in names if binds[name].value is not None},
        required=frozenset(name for name in names if binds[name].required),
        to_database=tuple(binds[name].type.dialect_impl(dialect).bind_processor(dialect) for name in names),
        types=tuple(types),
    )


class Rows:
    """A statement's rows (tuples, in the order of its columns) and the count of rows it changed."""

    def __init__(self, rows: list[tuple[Any, ...]], rowcount: int) -> None:
        self.rows = rows
        self.rowcount = rowcount

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        return iter(self.rows)

    def first(self) -> tuple[Any, ...] | None:
        return self.rows[0] if self.rows else None

    def one(self) -> tuple[Any, ...]:
        if not self.rows:
            raise NoResultFound("no row where exactly one was expected")
        if len(self.rows) > 1:
            raise MultipleResultsFound("several rows where exactly one was expected")
        return self.rows[0]

    def scalar(self) -> Any:
        return self.rows[0][0] if self.rows else None

    def scalars(self) -> list[Any]:
        return [row[0] for row in self.rows]


class Direct:
    """Runs `Prepared` statements on an engine's pool, each in autocommit (see the module's doc)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine.sync_engine
        self.dialect = engine.dialect
        # PostgreSQL's adapter begins a transaction before a statement unless told it is in autocommit;
        # SQLite's connections here never begin one by themselves (store.py begins them).
        self._toggles_autocommit = self.dialect.name == "postgresql"

    async def execute(self, prepared: Prepared, parameters: Mapping[str, Any] | None = None) -> Rows:
        compiled = prepared.compiled(self.dialect)
        arguments = _arguments(compiled, parameters)
        raw_rows, rowcount, description = await greenlet_spawn(self._run, compiled, arguments)
        return Rows(_converted_rows(compiled, self.dialect, raw_rows, description), rowcount)

    async def in_one_trip(self, work: Callable[[Trip], T]) -> T:
        """SQLite: `work` runs in the connection's own thread as ONE transaction (BEGIN IMMEDIATE,
        its statements, COMMIT; rolled back if it raises): one hand-off to that thread where each
        statement would take one. `work` runs off the event loop: it only runs statements (`Trip`)
        and decides between them."""
        if self.dialect.name != "sqlite":
            raise ValueError("one trip is for SQLite's connections, which run in a thread of their own")
        result: T
        result, executed = await greenlet_spawn(self._trip, work)
        self._tell_listeners(executed)
        return result

    def _tell_listeners(self, executed: list[tuple[str, tuple[Any, ...]]]) -> None:
        """As in `_run`, the engine's listeners see each statement of a trip; here once it is over."""
        dispatch = self._engine.dispatch
        for sql, arguments in executed:
            for before in dispatch.before_cursor_execute:
                before(None, None, sql, arguments, None, False)
            for after in dispatch.after_cursor_execute:
                after(None, None, sql, arguments, None, False)

    def _trip(self, work: Callable[[Trip], T]) -> tuple[T, list[tuple[str, tuple[Any, ...]]]]:
        connection = self._engine.raw_connection()
        trip = Trip(self.dialect)
        try:
            driver = connection.dbapi_connection.driver_connection  # type: ignore[union-attr]
            result = await_only(driver.in_one_transaction(trip.bound_to, work))
            return result, trip.executed
        except self.dialect.loaded_dbapi.Error as error:
            sql, arguments = trip.executed[-1] if trip.executed else ("BEGIN IMMEDIATE", ())
            raise self._translated(error, connection, sql, arguments) from error
        finally:
            connection.close()

    def _run(self, compiled: _Compiled, arguments: tuple[Any, ...]) -> tuple[Sequence[Any], int, Any]:
        """In SQLAlchemy's greenlet: check out, execute, check in, as a Connection would."""
        connection = self._engine.raw_connection()
        adapted: Any = connection.dbapi_connection
        try:
            if self._toggles_autocommit:
                adapted.autocommit = True
            cursor = adapted.cursor()
            dispatch = self._engine.dispatch
            # The engine's listeners still see each statement (a census of statements, tracing), with
            # no Connection and no execution context: there is none. They cannot rewrite it.
            for listener in dispatch.before_cursor_execute:
                listener(None, cursor, compiled.sql, arguments, None, False)
            try:
                cursor.execute(compiled.sql, arguments)
                for listener in dispatch.after_cursor_execute:
                    listener(None, cursor, compiled.sql, arguments, None, False)
                description = cursor.description if compiled.types else None
                rows = cursor.fetchall() if description else []
                return rows, cursor.rowcount, description
            finally:
                cursor.close()
        except self.dialect.loaded_dbapi.Error as error:
            raise self._translated(error, connection, compiled.sql, arguments) from error
        finally:
            if self._toggles_autocommit and connection.is_valid:
                adapted.autocommit = False
            connection.close()

    def _translated(self, error: Any, connection: Any, sql: str, arguments: tuple[Any, ...]) -> DBAPIError:
        """The driver's error as SQLAlchemy's Connection raises it; a dead connection is invalidated
        (closed, and the pool's older connections with it) as it would be there."""
        dead = self.dialect.is_disconnect(error, connection.dbapi_connection, None)
        if dead:
            connection.invalidate(error)
        translated = DBAPIError.instance(
            sql,
            arguments,
            error,
            self.dialect.loaded_dbapi.Error,
            hide_parameters=self._engine.hide_parameters,
            connection_invalidated=dead,
            dialect=self.dialect,
        )
        return translated  # type: ignore[no-any-return]


class _SqliteInLoop(Direct):
    """`Direct` for a SQLite file whose statements run at once in the calling (event loop's) thread, on
    a connection of its own that waits for no lock (busy timeout 0): no hand-off to a connection's
    thread, no wait for the loop's next turn to resume. What it cannot run at once goes the usual way,
    through a connection's thread (`Direct`), which waits for its turn as every statement does."""

    def __init__(self, engine: AsyncEngine, path: str) -> None:
        super().__init__(engine)
        self._path = path
        self._connection: sqlite3.Connection | None = None

    def _opened(self) -> sqlite3.Connection:
        if self._connection is None:
            self._connection = self._connect(self._path)
        return self._connection

    def _connect(self, path: str) -> sqlite3.Connection:
        raise NotImplementedError

    def _run_here(self, compiled: _Compiled, arguments: tuple[Any, ...]) -> tuple[list[Any], int, Any]:
        connection = self._opened()
        dispatch = self._engine.dispatch
        # As `Direct._run`: the engine's listeners see each statement.
        for listener in dispatch.before_cursor_execute:
            listener(None, None, compiled.sql, arguments, None, False)
        answer = _on_sqlite3(connection, compiled, arguments)
        for listener in dispatch.after_cursor_execute:
            listener(None, None, compiled.sql, arguments, None, False)
        return answer

    def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()


class SqliteLoopReads(_SqliteInLoop):
    """The reads of a SQLite file, in the event loop's thread. In WAL mode (store.py sets it on every
    connection) a read neither waits for a writer nor blocks one; this connection also writes nothing.
    A read it cannot run at once (a lock held during a recovery, the database not in WAL mode yet, any
    error) is run again the usual way, which waits or raises as every read does. Only `Prepared`
    statements come here: the hot path's lookups by a key."""

    async def execute(self, prepared: Prepared, parameters: Mapping[str, Any] | None = None) -> Rows:
        compiled = prepared.compiled(self.dialect)
        arguments = _arguments(compiled, parameters)
        try:
            raw_rows, rowcount, description = self._run_here(compiled, arguments)
        except sqlite3.Error:
            return await super().execute(prepared, parameters)
        return Rows(_converted_rows(compiled, self.dialect, raw_rows, description), rowcount)

    def _connect(self, path: str) -> sqlite3.Connection:
        return _loop_connection(path, "PRAGMA query_only=ON")


# A write connection in the loop's thread leaves the copy of the WAL file into the database (a
# checkpoint: many pages written, then synced) to a thread, once every so many of its commits. SQLite
# checkpoints by itself every 1,000 pages of WAL; a commit of the hot path writes a few.
CHECKPOINT_EVERY = 250


class SqliteLoopWrites(_SqliteInLoop):
    """The hot path's writes of a SQLite file, in the event loop's thread: a statement committing by
    itself (`execute`) and `in_one_trip`'s transactions (BEGIN IMMEDIATE to COMMIT). Each runs whole,
    with nothing else of the loop in between and no cancellation halfway, as a trip to a connection's
    thread did. A commit does not sync the WAL file inside COMMIT (`synchronous=NORMAL`, in WAL mode
    only): the unit of work (store.py, `Database.direct_writes`) waits for `durable` once it has
    given back its turn, and a thread syncs its commits with any others made meanwhile
    (generation/wal_sync.py), or the loop syncs them itself when the process has nothing else to do.
    Durable as with FULL.

    The caller holds this process's turn at the write lock (store.py, `WriteGate`), so no writer of
    this process holds SQLite's; another process's may (an `aibot worker` of its own): then nothing was
    written, and the write goes the usual way, through a connection's thread that waits for the lock.
    Any other error is raised as SQLAlchemy raises it (an `IntegrityError`...), the transaction rolled
    back. Checkpoints run in a thread, every CHECKPOINT_EVERY commits, never in the loop."""

    def __init__(self, engine: AsyncEngine, path: str) -> None:
        super().__init__(engine, path)
        self._commits = 0
        self._checkpoint: asyncio.Future[None] | None = None
        self._wal = WalSync(path)
        self._sync_after_commit = False  # set as the connection opens: in WAL mode only

    def _connect(self, path: str) -> sqlite3.Connection:
        connection = _loop_connection(path, "PRAGMA wal_autocheckpoint=0")
        # A commit is synced by `WalSync` in a thread, not inside COMMIT (generation/wal_sync.py). Only
        # in WAL mode (store.py sets it as the engines connect): in another, NORMAL would sync less.
        self._sync_after_commit = connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        if self._sync_after_commit:
            connection.execute("PRAGMA synchronous=NORMAL")
        return connection

    async def execute(self, prepared: Prepared, parameters: Mapping[str, Any] | None = None) -> Rows:
        compiled = prepared.compiled(self.dialect)
        arguments = _arguments(compiled, parameters)
        try:
            changes = self._opened().total_changes
            raw_rows, rowcount, description = self._run_here(compiled, arguments)
        except sqlite3.Error as error:
            if _is_busy(error):  # the lock was not had: the statement did nothing
                return await super().execute(prepared, parameters)
            raise self._translated_here(error, compiled.sql, arguments) from error
        self._committed(changes)
        return Rows(_converted_rows(compiled, self.dialect, raw_rows, description), rowcount)

    async def in_one_trip(self, work: Callable[[Trip], T]) -> T:
        trip = Trip(self.dialect)
        try:
            connection = self._opened()
            changes = connection.total_changes
            result = run_in_one_transaction(connection, trip.bound_to, work)
        except sqlite3.Error as error:
            if _is_busy(error) and not trip.executed:  # BEGIN IMMEDIATE did not get the lock
                return await super().in_one_trip(work)
            sql, arguments = trip.executed[-1] if trip.executed else ("BEGIN IMMEDIATE", ())
            raise self._translated_here(error, sql, arguments) from error
        self._committed(changes)
        self._tell_listeners(trip.executed)
        return result

    def _translated_here(self, error: sqlite3.Error, sql: str, arguments: tuple[Any, ...]) -> StatementError:
        """The error as SQLAlchemy raises it (an IntegrityError...), as `Direct._translated`."""
        return DBAPIError.instance(
            sql,
            arguments,
            error,
            self.dialect.loaded_dbapi.Error,
            hide_parameters=self._engine.hide_parameters,
            dialect=self.dialect,
        )

    def _committed(self, changes_before: int) -> None:
        """After a commit that changed anything (one that changed nothing wrote nothing): counted for
        `durable`, and now and then a checkpoint."""
        if self._opened().total_changes == changes_before:
            return
        if self._sync_after_commit:
            self._wal.written()
        self._commits += 1
        if self._commits >= CHECKPOINT_EVERY and (self._checkpoint is None or self._checkpoint.done()):
            self._commits = 0
            self._checkpoint = asyncio.get_running_loop().run_in_executor(None, _checkpoint, self._path)
            self._checkpoint.add_done_callback(_report_failed_checkpoint)

    @property
    def commits(self) -> int:
        """Commits written so far, for `durable`."""
        return self._wal.count

    async def durable(self, since: int, *, here: bool = False) -> None:
        """Return once every commit written after the `commits` count `since` is on disk (at once when
        there is none): a unit of work's writes are synced together, once it has given up its turn
        at the write lock, so that the next unit writes meanwhile and shares the sync
        (generation/wal_sync.py). `here`: in the loop's thread, if no sync is under way."""
        if self._wal.count > since:
            await self._wal.durable(self._wal.count, here=here)

    async def finish(self) -> None:
        """Wait for a sync and a checkpoint under way, then close the connection."""
        await self._wal.finish()
        checkpoint, self._checkpoint = self._checkpoint, None
        if checkpoint is not None and checkpoint.get_loop() is asyncio.get_running_loop():
            with contextlib.suppress(sqlite3.Error):
                await checkpoint
        self.close()


def _is_busy(error: sqlite3.Error) -> bool:
    return getattr(error, "sqlite_errorcode", None) in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


def _report_failed_checkpoint(checkpoint: asyncio.Future[None]) -> None:
    # The next one copies what this one did not: a failure is told, not raised.
    if not checkpoint.cancelled() and checkpoint.exception() is not None:
        logger.warning("SQLite checkpoint failed: {}", checkpoint.exception())


def _checkpoint(path: str) -> None:
    """In a thread: as much of the WAL file as no reader still needs, copied into the database."""
    connection = sqlite3.connect(path, timeout=30, isolation_level=None)
    try:
        connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
    finally:
        connection.close()


def _loop_connection(path: str, *pragmas: str) -> sqlite3.Connection:
    # Used from the event loop's thread, one statement at a time; not tied to it, so that closing the
    # database from another thread closes it too. Waits for no lock (timeout 0): the caller goes the
    # usual way instead.
    connection = sqlite3.connect(path, timeout=0, isolation_level=None, check_same_thread=False)
    try:
        for pragma in ("PRAGMA foreign_keys=ON", *pragmas):
            connection.execute(pragma)
    except BaseException:
        connection.close()
        raise
    return connection


def _arguments(compiled: _Compiled, parameters: Mapping[str, Any] | None) -> tuple[Any, ...]:
    """The statement's parameters in their order, converted for the driver."""
    values = compiled.defaults | dict(parameters) if parameters else compiled.defaults
    if not compiled.required.issubset(values):  # as SQLAlchemy: a name mistyped is no NULL
        missing = ", ".join(sorted(compiled.required.difference(values)))
        raise ArgumentError(f"a value is required for the parameters {missing}")
    return tuple(
        value if convert is None or value is None else convert(value)
        for value, convert in zip(
            (values.get(name) for name in compiled.names), compiled.to_database, strict=True
        )
    )


def _converted_rows(
    compiled: _Compiled, dialect: Dialect, raw_rows: Sequence[Any], description: Any
) -> list[tuple[Any, ...]]:
    """The driver's rows as SQLAlchemy would answer them."""
    converters = compiled.from_database
    if converters is None and description:
        converters = compiled.from_database = tuple(
            type_.dialect_impl(dialect).result_processor(dialect, column[1])
            for type_, column in zip(compiled.types, description, strict=True)
        )
    if not raw_rows or converters is None or not any(converters):
        return [tuple(row) for row in raw_rows]
    return [
        tuple(
            value if convert is None or value is None else convert(value)
            for value, convert in zip(row, converters, strict=True)
        )
        for row in raw_rows
    ]


class Trip:
    """The statements of `Direct.in_one_trip`, run in the SQLite connection's thread on its sqlite3
    connection, converted as `Direct.execute` converts them."""

    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect
        self.executed: list[tuple[str, tuple[Any, ...]]] = []
        self._connection: sqlite3.Connection | None = None

    def bound_to(self, connection: sqlite3.Connection) -> Trip:
        self._connection = connection
        return self

    def execute(self, prepared: Prepared, parameters: Mapping[str, Any] | None = None) -> Rows:
        assert self._connection is not None, "a trip's statements run in its connection's thread"
        compiled = prepared.compiled(self.dialect)
        arguments = _arguments(compiled, parameters)
        self.executed.append((compiled.sql, arguments))
        raw_rows, rowcount, description = _on_sqlite3(self._connection, compiled, arguments)
        return Rows(_converted_rows(compiled, self.dialect, raw_rows, description), rowcount)


def _on_sqlite3(
    connection: sqlite3.Connection, compiled: _Compiled, arguments: tuple[Any, ...]
) -> tuple[list[Any], int, Any]:
    """A statement on a sqlite3 connection: its rows (read whole), rowcount and description. The cursor
    is closed at once: an open statement would hold its read transaction, and with it the WAL file from
    being checkpointed."""
    cursor = connection.cursor()
    try:
        cursor.execute(compiled.sql, arguments)
        description = cursor.description if compiled.types else None
        rows = cursor.fetchall() if description else []
        return rows, cursor.rowcount, description
    finally:
        cursor.close()


async def run(
    connection: Direct | AsyncConnection, prepared: Prepared, parameters: Mapping[str, Any] | None = None
) -> Rows:
    """`prepared` on `Direct`, or on a connection of SQLAlchemy's (inside a transaction): the same rows."""
    if isinstance(connection, Direct):
        return await connection.execute(prepared, parameters)
    result = await connection.execute(prepared.statement, dict(parameters or {}))
    rows = [tuple(row) for row in result] if result.returns_rows else []
    return Rows(rows, result.rowcount)
