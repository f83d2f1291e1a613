"""The step journal: `await steps.run("name", fn)` runs `fn` once per generation and saves its result.

A rerun of the pipeline (a retry, a restarted worker, Plan B resuming after a restart) gets the saved
result back instead of doing the work again: a prediction is created once, its id is awaited again.
Results must be JSON: ids, URLs, small dicts. Never bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

from sqlalchemy import CTE, String, Subquery, bindparam, func, select, true, union_all
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from generation.direct_statements import Direct, Prepared, Trip, run
from generation.store import Database, Step, statements

T = TypeVar("T")


class StepJournal:
    def __init__(self, db: Database, generation_id: str, *, journal: dict[str, Any] | None = None) -> None:
        """`journal`: the steps as already read (a claim reads them in its own transaction)."""
        self.db = db
        self.generation_id = generation_id
        self._done: dict[str, Any] | None = journal
        # A step being run now: a second caller in this run (a status shown from two places at once)
        # waits for the same call instead of making it twice.
        self._running: dict[str, asyncio.Future[Any]] = {}
        # Results kept (`keep`) and not yet written: they go with the journal's next write.
        self._kept: dict[str, Any] = {}
        # Results owed to the journal (`owe`): they go with its next write, gated or not, and with
        # `flush` when the run ends before one.
        self._owed: dict[str, Any] = {}

    async def load(self) -> dict[str, Any]:
        if self._done is None:
            async with self.db.direct_reads() as direct:
                rows = await direct.execute(STEPS_OF, {"generation_id": self.generation_id})
            self._done = {name: result for name, result in rows}
        return self._done

    async def saved(self, name: str) -> Any:
        """The saved result of a step, or None when it has not run."""
        return (await self.load()).get(name)

    async def refresh(self, name: str) -> Any:
        """Read a step from the database again: another process (a webhook) may have journaled it."""
        done = await self.load()
        if name in done:
            return done[name]
        async with self.db.sessions() as session:
            row = await session.scalar(
                select(Step).where(Step.generation_id == self.generation_id, Step.name == name)
            )
        if row is None:
            return None
        done[name] = row.result
        return row.result

    async def is_done(self, name: str) -> bool:
        return name in await self.load()

    async def run(
        self,
        name: str,
        fn: Callable[[], Awaitable[T]],
        *,
        shielded: bool = False,
        also: dict[str, Any] | None = None,
        durable: bool = True,
        owe_if: Callable[[], bool] | None = None,
    ) -> T:
        """`shielded` for paid calls: a cancellation (a stopping process) waits until the call's
        result is journaled, so the next run finds it instead of paying again. `also`: more steps
        journaled in the same transaction as this one's result. `durable=False`: the run goes on once
        the result is committed, without waiting for it to be on disk (`Database.direct_writes`).
        `owe_if`: asked once the call returned; when True the result is owed (`owe`) instead of
        written now, as the run's next write follows at once."""
        done = await self.load()
        if name in done:
            return done[name]  # type: ignore[no-any-return]
        running = self._running.get(name)
        if running is not None:
            await asyncio.shield(running)
            return done[name]  # type: ignore[no-any-return]

        async def call_and_record() -> None:
            result = await fn()
            results = {name: result, **also} if also else {name: result}
            if owe_if is not None and owe_if():
                await self.owe(results)
            else:
                await self.record_many(results, durable=durable)

        task = self._running[name] = asyncio.ensure_future(call_and_record())
        try:
            if shielded:
                try:
                    await asyncio.shield(task)
                except asyncio.CancelledError:
                    # Finish journaling the paid call, then stop: a second cancellation (a stop that
                    # insists) must not cut it either, or the next run would pay again.
                    while not task.done():
                        with contextlib.suppress(asyncio.CancelledError):
                            await asyncio.shield(task)
                    raise
            else:
                await task
        finally:
            if task.done():
                self._running.pop(name, None)
        return done[name]  # type: ignore[no-any-return]

    async def keep(self, name: str, result: Any) -> Any:
        """Save a step's result for this run now, and in the journal with its next write (`add`,
        `record`, `run`) instead of a transaction of its own. Only for a result that can be had again
        for free (a provider job's final state, read by one more poll): a crash, or a try that ends
        with no write after it, loses it, and the next run reads it again. A result journaled already
        (a provider's webhook) is the one kept."""
        done = await self.load()
        if name not in done:
            done[name] = self._kept[name] = result
        return done[name]

    async def owe(self, results: dict[str, Any]) -> None:
        """Save steps' results for this run now, and in the journal with its next write, whatever
        that is: gated (`add_many_if`) or not, and even when its gate refuses the rest. For results
        that must be journaled, but whose own transaction would only come a moment before the next
        one (a provider job that answered finished, whose delivery's mark follows): `flush` writes
        them when the run ends without another write (cancelled, or a retry). A crash in between
        loses them, as a crash before their own write would."""
        done = await self.load()
        for name, result in results.items():
            if name not in done:
                done[name] = self._owed[name] = result

    async def flush(self) -> None:
        """Write what is owed to the journal (`owe`), if anything."""
        if self._owed:
            await self.record_many({})

    @contextlib.contextmanager
    def _pending(self, results: dict[str, Any]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
        """Around the journal's next write: its rows (the kept and owed results, then `results`) and
        the owed ones among them, taken off the books; owed again when the write fails."""
        rows, owed = {**self._kept, **self._owed, **results}, self._owed
        self._kept, self._owed = {}, {}
        try:
            yield rows, owed
        except BaseException:
            self._owed = {**owed, **self._owed}
            raise

    async def add(self, session: AsyncSession, name: str, result: Any) -> None:
        """Journal a step inside the caller's transaction (so it commits with what it is part of); a
        step journaled already keeps its first result. Kept results go in the same transaction."""
        await self.add_many(session, {name: result})

    async def add_many(self, session: AsyncSession | Direct, results: dict[str, Any]) -> None:
        """Journal several steps, and the kept results, in the caller's transaction (or as one
        statement of its own on `Direct`): one INSERT of them all. A step journaled already (by
        another runner) keeps its first result."""
        await self.load()
        with self._pending(results) as (rows, _):
            if not rows:
                return
            connection = session if isinstance(session, Direct) else await statements(session)
            inserted = await run(
                connection,
                _journal_insert(connection.dialect.name, len(rows)),
                {"generation_id": self.generation_id, **_step_values(rows)},
            )
        await self._note_written(connection, rows, set(inserted.scalars()))

    async def add_many_if(
        self, connection: Direct, results: dict[str, Any], gate: CTE, gate_values: dict[str, Any]
    ) -> bool:
        """PostgreSQL only: journal several steps, and the kept results, in ONE statement with `gate`,
        a CTE that answers the generation's id (a SELECT that locks its row, an UPDATE ... RETURNING
        that ends it), built once with bound parameters that `gate_values` fills: the rows are written
        only when the gate answers the id, all or none, with whatever the gate itself changes. Answers
        whether it did. Run in autocommit, that is one round trip where a transaction would be four."""
        await self.load()
        with self._pending(results) as (rows, owed):
            values = {**gate_values, **_step_values(rows)}
            passed, *added = (await connection.execute(_gated_insert(gate, len(rows)), values)).one()
        if passed is None:
            if owed:  # written all the same, on their own
                await self.add_many(connection, owed)
            return False
        await self._note_written(connection, rows, set(added[0] or ()) if added else set())
        return True

    async def add_many_if_in_one_trip(
        self, direct: Direct, results: dict[str, Any], gate: Prepared, gate_values: dict[str, Any]
    ) -> bool:
        """SQLite's `add_many_if`: `gate` (a statement that answers a row when the generation may go
        on: a SELECT of it while it runs, an UPDATE ... RETURNING that ends it), then the steps and the
        kept results, all or none, as one transaction in ONE trip to the connection's thread
        (`Direct.in_one_trip`) where a session takes one per statement and one more to commit."""
        await self.load()
        generation = {"generation_id": self.generation_id}
        with self._pending(results) as (rows, owed):

            def gated(trip: Trip) -> tuple[set[str], list[tuple[Any, ...]]] | None:
                if trip.execute(gate, gate_values).first() is None:
                    if owed:  # written all the same, on their own
                        trip.execute(
                            _journal_insert("sqlite", len(owed)), {**generation, **_step_values(owed)}
                        )
                    return None
                if not rows:
                    return set(), []
                written = trip.execute(
                    _journal_insert("sqlite", len(rows)), {**generation, **_step_values(rows)}
                )
                added = set(written.scalars())
                return added, [] if added == set(rows) else trip.execute(STEPS_OF, generation).rows

            outcome = await direct.in_one_trip(gated)
        if outcome is None:
            return False
        added, journaled = outcome
        self._noted(rows, added, journaled)
        return True

    async def _note_written(
        self, connection: AsyncConnection | Direct, rows: dict[str, Any], added: set[str]
    ) -> None:
        """What an INSERT of `rows` wrote (`added`) is now done; a row it skipped was journaled first
        by another runner: this run continues from that one's result, read back."""
        await self.load()
        journaled: list[tuple[Any, ...]] = []
        if set(rows) - added:
            journaled = (await run(connection, STEPS_OF, {"generation_id": self.generation_id})).rows
        self._noted(rows, added, journaled)

    def _noted(self, rows: dict[str, Any], added: set[str], journaled: list[tuple[Any, ...]]) -> None:
        assert self._done is not None
        self._done.update({name: result for name, result in rows.items() if name in added})
        taken = {name for name in rows if name not in added}
        self._done.update({name: result for name, result in journaled if name in taken})

    async def record_many(self, results: dict[str, Any], *, durable: bool = True) -> None:
        """Journal several steps at once (one INSERT, atomic by itself); each keeps a first result.
        `durable=False`: see `Database.direct_writes`."""
        async with self.db.direct_writes(durable=durable) as direct:
            await self.add_many(direct, results)

    async def record(self, name: str, result: Any) -> None:
        """Journal one step in a transaction of its own. Another runner may have journaled it first
        (only possible after a lease expired under a live runner): the first record wins, so everyone
        continues from the same result."""
        await self.record_many({name: result})


# The journal of one generation, every step and its result.
STEPS_OF = Prepared(select(Step.name, Step.result).where(Step.generation_id == bindparam("generation_id")))


def _step_values(rows: dict[str, Any]) -> dict[str, Any]:
    """The bound values of `rows` for `_journaled_rows`' parameters."""
    values: dict[str, Any] = {}
    for index, (name, result) in enumerate(rows.items()):
        values[f"step_name_{index}"] = name
        values[f"step_result_{index}"] = result
    return values


def _journaled_rows(count: int) -> Subquery:
    """`count` rows (name, result) of bound values: one SELECT per row, `count` being the only
    variable shape of a journal write, so that each statement built from it is built once."""
    return union_all(
        *(
            select(
                bindparam(f"step_name_{index}", type_=String).label("name"),
                bindparam(f"step_result_{index}", type_=Step.result.type).label("result"),
            )
            for index in range(count)
        )
    ).subquery("journaled")


@functools.lru_cache(maxsize=16)
def _journal_insert(dialect: str, count: int) -> Prepared:
    """`add_many`'s INSERT of `count` steps for one generation (`generation_id`), built once per shape.
    Not one INSERT run with a list of parameter sets: SQLAlchemy renders that anew on every call
    ("insertmanyvalues"), by a profile some 5 % of the PostgreSQL burst's CPU; nor `.values([...])`,
    which SQLAlchemy never caches."""
    insert = postgresql_insert if dialect == "postgresql" else sqlite_insert
    generation_id = bindparam("generation_id", type_=String)
    if count == 1:
        one = {"generation_id": generation_id, "name": bindparam("step_name_0", type_=String)}
        statement = insert(Step).values(**one, result=bindparam("step_result_0", type_=Step.result.type))
    else:
        journaled = _journaled_rows(count)
        # `WHERE true`: SQLite reads an upsert after a bare SELECT as part of it.
        rows = select(generation_id, journaled.c.name, journaled.c.result).where(true())
        statement = insert(Step).from_select(["generation_id", "name", "result"], rows)
    return Prepared(statement.on_conflict_do_nothing().returning(Step.name), only=dialect)


@functools.lru_cache(maxsize=16)
def _gated_insert(gate: CTE, count: int) -> Prepared:
    """`add_many_if`'s statement for `count` rows, built once: building a statement of CTEs (their
    columns' collections above all) costs more CPU than the round trips it saves, and a statement built
    once also keeps SQLAlchemy's cache key of it."""
    answers = [select(gate.c.id).scalar_subquery()]
    if count:
        journaled = _journaled_rows(count)
        written = (
            postgresql_insert(Step)
            .from_select(
                ["generation_id", "name", "result"],
                # Each row, when the gate answers the id.
                select(gate.c.id, journaled.c.name, journaled.c.result).join_from(gate, journaled, true()),
            )
            .on_conflict_do_nothing()
            .returning(Step.name)
            .cte("written")
        )
        answers.append(select(func.array_agg(written.c.name)).scalar_subquery())
    return Prepared(select(*answers), only="postgresql")
