"""Runs an `aibot` command (``python -m bench.counted run``) and counts the database transactions it
ends, for the benchmarks.

The count is kept in a small file shared by memory map (``BENCH_COUNTER_FILE``): three little-endian
64-bit integers, the transactions the process committed and those it rolled back, a write that commits
by itself (autocommit) counting as one committed, and its round trips to Redis (a command sent alone, or
a pipeline of them, takes a connection from redis-py's pool once: each such checkout counts). The
benchmark reads the file whenever it likes, without disturbing the process. Everything else is the
product's own console script (the ``aibot`` entry point), unchanged; with ``BENCH_PROFILE_FILE`` it runs
under cProfile and leaves its statistics there at exit; with ``BENCH_STATEMENTS_FILE`` it writes there
at exit every SQL statement it executed, counted, most frequent first (marked when SQLAlchemy compiled
it rather than taking it from its cache); with ``BENCH_GC_FILE`` it writes there at exit every garbage
collection it made: the generation collected, when, and how long it held the process.

Much of the product's hot path runs its statements on the driver's connection, past SQLAlchemy's
Connection (generation/direct_statements.py), where SQLAlchemy's commit events do not fire. So on
SQLite every connection the process opens counts what it is handed (each COMMIT, each ROLLBACK, each
write outside a transaction), whoever drives it; on PostgreSQL the count is SQLAlchemy's commits and
rollbacks outside autocommit plus every write run in autocommit, and the benchmark also reads the
server's own count (pg_stat_database.xact_commit), which additionally sees each read run outside a
transaction.
"""

from __future__ import annotations

import atexit
import mmap
import os
import re
import struct
import sys
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.engine.interfaces import CacheStats

COUNTER = struct.Struct("<qqq")


def read_counter(path: Path) -> tuple[int, int, int]:
    """(commits, rollbacks, Redis round trips) so far; zeros before the process made the file."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return 0, 0, 0
    if len(data) < COUNTER.size:
        return 0, 0, 0
    commits, rollbacks, redis_trips = COUNTER.unpack_from(data)
    return int(commits), int(rollbacks), int(redis_trips)


def install_counter(path: Path) -> None:
    path.write_bytes(bytes(COUNTER.size))
    descriptor = os.open(path, os.O_RDWR)
    shared = mmap.mmap(descriptor, COUNTER.size)
    os.close(descriptor)
    counts = [0, 0, 0]

    def committed() -> None:
        counts[0] += 1
        COUNTER.pack_into(shared, 0, *counts)

    def rolled_back() -> None:
        counts[1] += 1
        COUNTER.pack_into(shared, 0, *counts)

    def went_to_redis() -> None:
        counts[2] += 1
        COUNTER.pack_into(shared, 0, *counts)

    _count_redis_round_trips(went_to_redis)

    if os.environ.get("DATABASE_URL", "").startswith("sqlite"):
        _count_sqlite_transactions(committed, rolled_back)
    else:
        _count_engine_transactions(committed, rolled_back)


def _count_redis_round_trips(went: Callable[[], None]) -> None:
    """redis-py's asyncio pool hands out a connection for every command sent alone and for every
    pipeline (arq's, the product's): one checkout per round trip."""
    from redis.asyncio.connection import ConnectionPool

    checkout = ConnectionPool.get_connection

    async def get_connection(self: ConnectionPool, *args: Any, **kwargs: Any) -> Any:
        went()
        return await checkout(self, *args, **kwargs)

    ConnectionPool.get_connection = get_connection  # type: ignore[method-assign]


# A statement that writes: when run outside a transaction, it is a transaction (and a commit) of its own.
_WRITES = ("INSERT", "UPDATE", "DELETE", "REPLACE")
_A_WRITE = re.compile(r"\b(INSERT|UPDATE|DELETE)\b", re.IGNORECASE)


def _writes(statement: str) -> bool:
    first = statement.lstrip()[:7].upper()
    if first.startswith(_WRITES):
        return True
    # WITH ... AS (UPDATE ...): a common table expression in front of a write, or holding one.
    return first.startswith("WITH") and _A_WRITE.search(statement) is not None


def _count_sqlite_transactions(committed: Callable[[], None], rolled_back: Callable[[], None]) -> None:
    """Every COMMIT and ROLLBACK, and every write that commits by itself, on every SQLite connection
    the process opens (SQLAlchemy's, and those the product drives itself, past SQLAlchemy): each is
    made of a subclass of sqlite3's connection (`sqlite3.connect`'s `factory`) that sees each statement
    handed to it, and its commit() and rollback(). Not SQLite's trace callback: called inside each
    statement's step, it makes a connection's thread take the interpreter's lock once more per
    statement, and a burst then ran 3-4 % slower."""
    import sqlite3

    def count(connection: sqlite3.Connection, statement: str) -> None:
        head = statement.lstrip()[:8].upper()
        if head.startswith(("COMMIT", "END")):
            if connection.in_transaction:
                committed()
        elif head.startswith("ROLLBACK"):
            if connection.in_transaction and " TO " not in statement.upper():
                rolled_back()
        elif connection.isolation_level is None and not connection.in_transaction and _writes(statement):
            committed()  # autocommit: a write outside a transaction is one of its own

    class CountedCursor(sqlite3.Cursor):
        def execute(self, sql: str, parameters: Any = (), /) -> Any:
            count(self.connection, sql)
            return super().execute(sql, parameters)

        def executemany(self, sql: str, parameters: Any, /) -> Any:
            count(self.connection, sql)
            return super().executemany(sql, parameters)

    class CountedConnection(sqlite3.Connection):
        def cursor(self, factory: Any = CountedCursor) -> Any:
            return super().cursor(factory)

        def execute(self, sql: str, parameters: Any = (), /) -> sqlite3.Cursor:
            count(self, sql)  # sqlite3 runs it on a cursor of its own, past that cursor's execute
            return super().execute(sql, parameters)

        def executemany(self, sql: str, parameters: Any, /) -> sqlite3.Cursor:
            count(self, sql)
            return super().executemany(sql, parameters)

        def commit(self) -> None:
            if self.in_transaction:
                committed()
            super().commit()

        def rollback(self) -> None:
            if self.in_transaction:
                rolled_back()
            super().rollback()

    connect = sqlite3.connect

    def counted_connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        kwargs.setdefault("factory", CountedConnection)
        connection: sqlite3.Connection = connect(*args, **kwargs)
        return connection

    sqlite3.connect = counted_connect  # type: ignore[assignment]


def _count_engine_transactions(committed: Callable[[], None], rolled_back: Callable[[], None]) -> None:
    """PostgreSQL: the transactions SQLAlchemy's connections commit or roll back, and every write run in
    autocommit, which commits by itself (the hot path's statements run on the driver's connection,
    past SQLAlchemy's Connection: generation/direct_statements.py; its listeners still see them)."""

    def in_autocommit(connection: Any) -> bool:
        if connection is None:  # the hot path's own statements: always autocommit on PostgreSQL
            return True
        dbapi = getattr(connection.connection, "dbapi_connection", None)
        return bool(getattr(dbapi, "autocommit", False))

    def on_commit(connection: Any) -> None:
        if not in_autocommit(connection):
            committed()

    def on_rollback(connection: Any) -> None:
        if not in_autocommit(connection):
            rolled_back()

    def on_execute(connection: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if _writes(statement) and in_autocommit(connection):
            committed()

    # Listening on the Engine class reaches every engine the process makes, async ones included.
    event.listen(Engine, "commit", on_commit)
    event.listen(Engine, "rollback", on_rollback)
    event.listen(Engine, "before_cursor_execute", on_execute)


def install_statement_census(path: Path) -> None:
    """Count the SQL statements the process executes, by text, and write them out at exit (most
    frequent first): which queries a generation's path makes, and how often."""
    counts: dict[str, int] = {}

    def on_execute(_conn: Any, _cursor: Any, statement: str, _parameters: Any, context: Any, *_: Any) -> None:
        # A statement SQLAlchemy compiled anew (not from its cache) is marked: on the hot path that
        # is CPU spent on every call.
        hit = getattr(context, "cache_hit", None)
        mark = "" if hit in (None, CacheStats.CACHE_HIT) else f"[{hit.name}] "
        key = mark + " ".join(statement.split())[:160]
        counts[key] = counts.get(key, 0) + 1

    def dump() -> None:
        lines = [f"{count}\t{key}" for key, count in sorted(counts.items(), key=lambda item: -item[1])]
        path.write_text("\n".join(lines) + "\n")

    event.listen(Engine, "before_cursor_execute", on_execute)
    atexit.register(dump)


def install_gc_log(path: Path) -> None:
    """Time every garbage collection (gc.callbacks) and write them out at exit, one per line:
    monotonic start, seconds it took, the generation collected, objects collected. A full collection
    of a large heap holds the event loop, and every request waiting on it, that long."""
    import gc
    import time

    started: list[float] = [0.0]
    collections: list[tuple[float, float, int, int]] = []

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[0] = time.monotonic()
        else:
            collections.append(
                (started[0], time.monotonic() - started[0], info["generation"], info["collected"])
            )

    def dump() -> None:
        path.write_text(
            "".join(
                f"{at:.4f}\t{took:.5f}\t{generation}\t{collected}\n"
                for at, took, generation, collected in collections
            )
        )

    gc.callbacks.append(on_gc)
    atexit.register(dump)


def main() -> None:
    counter_file = os.environ.get("BENCH_COUNTER_FILE")
    if counter_file:
        install_counter(Path(counter_file))
    gc_file = os.environ.get("BENCH_GC_FILE")
    if gc_file:
        install_gc_log(Path(gc_file))
    census_file = os.environ.get("BENCH_STATEMENTS_FILE")
    if census_file:
        install_statement_census(Path(census_file))
    (script,) = entry_points(group="console_scripts", name="aibot")
    sys.argv = ["aibot", *sys.argv[1:]]
    command = script.load()
    profile_file = os.environ.get("BENCH_PROFILE_FILE")
    if not profile_file:
        command()
        return
    # Where the event loop's thread spends its CPU (the database driver's thread is not seen).
    import cProfile

    profiler = cProfile.Profile()

    def dump() -> None:
        profiler.disable()
        profiler.dump_stats(profile_file)

    # At exit: `aibot run` ends the process without returning here (cli._exit_now runs exit handlers).
    atexit.register(dump)
    profiler.enable()
    command()


if __name__ == "__main__":
    main()
