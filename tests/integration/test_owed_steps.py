"""Results owed to a generation's journal (StepJournal.owe: a finished prediction's id, which waits for
the delivery's mark instead of a transaction of its own) reach it with the next write, on SQLite and
PostgreSQL: with the mark; all the same when a cancellation refuses the mark; with `flush` when the
run ends before another write; and they stay owed when a write fails."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from generation import lifecycle
from generation.steps import StepJournal
from generation.store import Database, Step
from tests.integration.test_cancel_against_delivery import running_generation

OWED = {"prediction:id": "p-1", "prediction:deadline": 1234.5}


async def journaled(db: Database, generation_id: str) -> dict[str, Any]:
    async with db.sessions() as session:
        rows = await session.execute(
            select(Step.name, Step.result).where(Step.generation_id == generation_id)
        )
        return {name: result for name, result in rows}


async def test_owed_results_are_journaled_with_the_delivery_mark(db: Database) -> None:
    generation_id = await running_generation(db, "owed-with-mark")
    journal = StepJournal(db, generation_id)
    await journal.owe(OWED)
    assert await journal.saved("prediction:id") == "p-1"  # this run has it at once
    assert await journaled(db, generation_id) == {}  # the database not yet

    assert await lifecycle.mark_delivery(db, journal)
    assert set(await journaled(db, generation_id)) == {*OWED, lifecycle.DELIVERING_STEP}
    assert (await journaled(db, generation_id))["prediction:id"] == "p-1"


async def test_owed_results_are_journaled_even_when_a_cancellation_refuses_the_mark(db: Database) -> None:
    generation_id = await running_generation(db, "owed-cancelled")
    journal = StepJournal(db, generation_id)
    await journal.owe(OWED)
    assert await lifecycle.cancel(db, generation_id) is not None

    assert not await lifecycle.mark_delivery(db, journal)
    assert await journaled(db, generation_id) == OWED  # the paid job's id, without the mark


async def test_flush_writes_what_is_owed_once(db: Database) -> None:
    generation_id = await running_generation(db, "owed-flushed")
    journal = StepJournal(db, generation_id)
    await journal.flush()  # nothing owed: no write
    await journal.owe(OWED)
    await journal.flush()
    assert await journaled(db, generation_id) == OWED
    await journal.record("next", 1)  # owed no more: only the new step is written
    assert await journaled(db, generation_id) == {**OWED, "next": 1}


async def test_a_write_that_fails_leaves_the_results_owed(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    generation_id = await running_generation(db, "owed-failed")
    journal = StepJournal(db, generation_id)
    await journal.owe(OWED)

    async def failing(*args: Any, **kwargs: Any) -> Any:
        raise ConnectionError("the database went away")

    monkeypatch.setattr("generation.steps.run", failing)  # the journal's INSERT, on either database
    with pytest.raises(ConnectionError):
        await journal.record("next", 1)
    monkeypatch.undo()
    await journal.flush()
    assert await journaled(db, generation_id) == OWED
