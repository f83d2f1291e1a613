"""SQLite connections as the product opens them (generation/store.py `create_engine`): aiosqlite's,
made cancel-safe and cheaper per statement, and the set of them a Database closes."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

import aiosqlite

T = TypeVar("T")
R = TypeVar("R")


class WholeStatementConnection(aiosqlite.Connection):
    """An aiosqlite connection whose statements a cancellation never cuts off halfway.

    A task cancelled while its statement runs (a stopping process, /cancel) otherwise makes
    SQLAlchemy abandon the connection mid-transaction, and on SQLite that connection keeps the
    database's only write lock until the process ends: every later write fails with "database is
    locked". Here the statement finishes first, then the cancellation goes on, and the transaction is
    rolled back and the connection closed as usual.

    It also begins its transactions lazily: `begin_with_next_statement` makes the BEGIN go to the
    connection's thread with the transaction's first statement, in the same trip, instead of in one
    of its own; a transaction that ran no statement costs no trip to commit or roll back."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pending_begin: str | None = None

    def begin_with_next_statement(self, begin: str) -> None:
        self._pending_begin = begin

    def take_pending_begin(self) -> str | None:
        begin, self._pending_begin = self._pending_begin, None
        return begin

    async def _execute(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        running = asyncio.ensure_future(super()._execute(fn, *args, **kwargs))  # type: ignore[no-untyped-call]
        try:
            return await asyncio.shield(running)
        except asyncio.CancelledError:
            await asyncio.wait([running])
            # End the transaction here, in the connection's own thread: SQLAlchemy's own cleanup
            # of a cancelled transaction does not reliably reach this connection.
            # (The sqlite3 connection is passed, not this object: see _statement_and_rows.)
            await asyncio.shield(super()._execute(_roll_back_if_open, self._connection))  # type: ignore[no-untyped-call]
            raise

    async def in_one_transaction(self, bind: Callable[[sqlite3.Connection], T], work: Callable[[T], R]) -> R:
        """`work(bind(connection))` in the connection's thread, in one transaction of its own (BEGIN
        IMMEDIATE, COMMIT; ROLLBACK when it raises): a transaction of several statements in one trip
        to the thread (generation/direct_statements.py, `Direct.in_one_trip`)."""
        if self._pending_begin is not None or (
            self._connection is not None and self._connection.in_transaction
        ):
            raise RuntimeError("a transaction is open on this connection already")
        return await self._execute(run_in_one_transaction, self._connection, bind, work)  # type: ignore[no-any-return]

    @property
    def is_open(self) -> bool:
        """Neither closed nor being closed (aiosqlite marks it stopped as its close begins to end)."""
        return bool(self._running) and self._connection is not None

    def cursor(self) -> _OneTripCursor:  # type: ignore[override]
        return _OneTripCursor(self)

    async def rollback(self) -> None:
        # SQLAlchemy rolls back every connection it returns to its pool. One that has no transaction
        # open (a read: reads begin none; a write after its COMMIT; a BEGIN still pending) has
        # nothing to roll back, and the trip to its thread is saved. Asked from the event loop's
        # thread, which the connection allows (`check_same_thread=False`): no statement of its runs
        # meanwhile, its user awaits it.
        self._pending_begin = None
        if self._connection is not None and not self._connection.in_transaction:
            return
        await super().rollback()

    async def commit(self) -> None:
        # Likewise: a transaction whose BEGIN never went (no statement ran) has nothing to commit.
        self._pending_begin = None
        if self._connection is not None and not self._connection.in_transaction:
            return
        await super().commit()


def run_in_one_transaction(
    connection: sqlite3.Connection, bind: Callable[[sqlite3.Connection], T], work: Callable[[T], R]
) -> R:
    """`work(bind(connection))` between BEGIN IMMEDIATE and COMMIT, rolled back if it raises: in a
    connection's thread here, in the event loop's (direct_statements.py, `SqliteLoopWrites`)."""
    connection.execute("BEGIN IMMEDIATE")
    try:
        result = work(bind(connection))
        connection.execute("COMMIT")
    except BaseException:
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        raise
    return result


def _roll_back_if_open(connection: sqlite3.Connection | None) -> None:
    with contextlib.suppress(sqlite3.ProgrammingError):  # a cancelled close(): nothing left to end
        if connection is not None and connection.in_transaction:
            connection.rollback()


def _statement_and_rows(
    connection: sqlite3.Connection, method: str, sql: str, parameters: Any, begin: str | None
) -> tuple[Any, int, int | None, list[Any]]:
    """Run in the connection's thread: `begin` first when the statement is its transaction's first.
    It takes the sqlite3 connection, not the aiosqlite one: the thread keeps the last function it
    ran, and a reference from there would keep a connection that is dropped unclosed from being
    collected, and so its thread (not a daemon) from ever ending."""
    if begin is not None:
        connection.execute(begin)
    cursor = connection.cursor()
    try:
        getattr(cursor, method)(sql, parameters)
        rows = cursor.fetchall() if cursor.description else []
        return cursor.description, cursor.rowcount, cursor.lastrowid, rows
    finally:
        cursor.close()


class _OneTripCursor:
    """The cursor SQLAlchemy's aiosqlite dialect is given: a statement, all its rows and its cursor's
    close in ONE trip to the connection's thread.

    aiosqlite's own cursor makes a trip for each of these, and one more to create the cursor: four
    per statement (five for a transaction's first, with its BEGIN), each a hand-off to the thread
    and a wake-up of the event loop (a system call), which on SQLite were most of what a statement
    cost. The rows are read whole, as SQLAlchemy's dialect does right after every statement anyway
    (it streams none)."""

    def __init__(self, connection: WholeStatementConnection) -> None:
        self._connection = connection
        self._rows: list[Any] = []
        self.description: Any = None
        self.rowcount = -1
        self.lastrowid: int | None = None
        self.arraysize = 1

    async def __aenter__(self) -> _OneTripCursor:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def execute(self, sql: str, parameters: Any = None) -> _OneTripCursor:
        return await self._run("execute", sql, () if parameters is None else parameters)

    async def executemany(self, sql: str, parameters: Any) -> _OneTripCursor:
        return await self._run("executemany", sql, parameters)

    async def _run(self, method: str, sql: str, parameters: Any) -> _OneTripCursor:
        connection = self._connection
        begin = connection.take_pending_begin()
        answer = await connection._execute(
            _statement_and_rows, connection._conn, method, sql, parameters, begin
        )
        self.description, self.rowcount, self.lastrowid, self._rows = answer
        return self

    async def fetchall(self) -> list[Any]:
        rows, self._rows = self._rows, []
        return rows

    async def fetchone(self) -> Any:
        return self._rows.pop(0) if self._rows else None

    async def fetchmany(self, size: int | None = None) -> list[Any]:
        count = self.arraysize if size is None else size
        rows, self._rows = self._rows[:count], self._rows[count:]
        return rows

    async def close(self) -> None:
        self._rows = []


class SqliteConnections:
    """Every SQLite connection a Database's engines open, so that closing the database closes each of
    them. Disposing an engine closes only the connections resting in its pool: one that a task held
    across the dispose is checked in afterwards to the discarded pool and never closed. Each owns a
    thread (aiosqlite's, not a daemon) that would keep the process from exiting."""

    def __init__(self) -> None:
        self._open: weakref.WeakSet[WholeStatementConnection] = weakref.WeakSet()

    def opened(self, connection: WholeStatementConnection) -> None:
        self._open.add(connection)

    async def close_all(self, within: float = 2.0) -> None:
        """Stop each connection still open: its thread closes the connection and ends (after the
        statement it may be running). Waits at most `within` seconds for them."""
        stopping = [connection.stop() for connection in list(self._open) if connection.is_open]
        waiting = [future for future in stopping if future is not None]
        if waiting:
            await asyncio.wait(waiting, timeout=within)
