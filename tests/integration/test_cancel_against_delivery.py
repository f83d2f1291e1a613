"""A cancellation and the start of a delivery never both win (generation/lifecycle.py), on SQLite and
PostgreSQL: before the `delivering` mark a cancellation refunds in full and the delivery may not
begin; after it the cancellation is refused and refunds nothing. Under races, each generation is
refunded at most once and the ledger always sums to the balance."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Coroutine
from typing import Any

import pytest
from sqlalchemy import func, select, text

from generation import ledger, lifecycle
from generation.steps import StepJournal
from generation.store import Database, Generation, GenerationStatus, LedgerEntry, Plan, User
from generation.users import ensure_user
from tests.conftest import wait_until

BONUS = 100
PRICE = 2


async def running_generation(db: Database, key: str) -> str:
    """A generation a runner has claimed, charged PRICE."""
    async with db.transaction() as session:
        user, _ = await ensure_user(session, "main", 1, username=None, language="en", new_user_bonus=BONUS)
        generation = Generation(
            request_key=key,
            kind="text_to_image",
            user_id=user.id,
            bot_name="main",
            model="flux-schnell",
            request={},
            plan=Plan.B,
            status=GenerationStatus.running,
            attempts=1,
            units=PRICE,
            unit_price=1,
            price=PRICE,
        )
        session.add(generation)
        await session.flush()
        await ledger.charge(session, user.id, PRICE, ledger.charge_key(generation.id), generation.id)
        return generation.id


# The mark inside a caller's transaction (a voice, a LoRA stored with it), and as a unit of its own
# (images, videos: one statement on PostgreSQL).
BEGIN_DELIVERY = ["in_a_transaction", "on_its_own"]


async def begin_delivery(db: Database, generation_id: str, how: str) -> bool:
    steps = StepJournal(db, generation_id)
    if how == "on_its_own":
        return await lifecycle.mark_delivery(db, steps)
    async with db.transaction() as session:
        return await lifecycle.begin_delivery(session, steps)


async def refunded(db: Database, generation_id: str) -> list[int]:
    async with db.sessions() as session:
        amounts = await session.scalars(
            select(LedgerEntry.amount).where(LedgerEntry.operation_key == ledger.refund_key(generation_id))
        )
        return list(amounts)


async def balance_and_ledger_sum(db: Database) -> tuple[int, int]:
    async with db.sessions() as session:
        balance = await session.scalar(select(User.balance))
        total = await session.scalar(select(func.sum(LedgerEntry.amount)))
        return int(balance or 0), int(total or 0)


async def a_writer_waits(db: Database) -> None:
    """Until another transaction waits for the one open now: on PostgreSQL for its row lock, on
    SQLite for its turn to write (one writer at a time)."""

    async def waiting() -> bool:
        if db.url.startswith("sqlite"):
            return bool(db._write_gate is not None and db._write_gate._waiting)
        async with db.sessions() as session:
            count = await session.scalar(
                text(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND wait_event_type = 'Lock'"
                )
            )
            return bool(count)

    await wait_until(waiting)


async def test_a_cancel_that_waited_on_a_delivery_beginning_is_refused(db: Database) -> None:
    """The cancel's statement starts before the mark commits: it must still see it (a check made in
    the UPDATE that changes the status would not, on PostgreSQL: the row is re-read after the lock,
    the journal is not)."""
    generation_id = await running_generation(db, "delivering")
    async with db.transaction() as session:
        assert await lifecycle.begin_delivery(session, StepJournal(db, generation_id))
        canceling = asyncio.create_task(lifecycle.cancel(db, generation_id))
        await a_writer_waits(db)
    assert await canceling is None
    assert await lifecycle.being_delivered(db, generation_id)
    assert await refunded(db, generation_id) == []
    assert await balance_and_ledger_sum(db) == (BONUS - PRICE, BONUS - PRICE)


@pytest.mark.parametrize("how", BEGIN_DELIVERY)
async def test_a_delivery_that_waited_on_a_cancel_does_not_begin(db: Database, how: str) -> None:
    generation_id = await running_generation(db, "canceled")
    async with db.transaction() as session:
        # What lifecycle.cancel does, held open: the row locked and the status changed.
        await session.execute(select(Generation.id).where(Generation.id == generation_id).with_for_update())
        row = await session.get(Generation, generation_id)
        assert row is not None
        row.status = GenerationStatus.canceled
        await session.flush()
        delivering = asyncio.create_task(begin_delivery(db, generation_id, how))
        await a_writer_waits(db)
    assert await delivering is False
    assert not await lifecycle.being_delivered(db, generation_id)


@pytest.mark.parametrize("how", BEGIN_DELIVERY)
async def test_cancels_racing_the_start_of_delivery_never_both_win(db: Database, how: str) -> None:
    rounds = 12
    for round_number in range(rounds):
        generation_id = await running_generation(db, f"race-{round_number}")
        racers: list[Coroutine[Any, Any, lifecycle.Canceled | bool | None]] = [
            lifecycle.cancel(db, generation_id) for _ in range(3)
        ]
        racers.insert(random.randrange(len(racers) + 1), begin_delivery(db, generation_id, how))
        outcomes = await asyncio.gather(*racers)
        begun = [outcome for outcome in outcomes if isinstance(outcome, bool)]
        canceled = [outcome for outcome in outcomes if isinstance(outcome, lifecycle.Canceled)]
        assert len(begun) == 1
        assert len(canceled) <= 1
        assert begun[0] != bool(canceled)  # exactly one side won
        async with db.sessions() as session:
            status = await session.scalar(select(Generation.status).where(Generation.id == generation_id))
        if canceled:
            assert status == GenerationStatus.canceled
            assert canceled[0].refund == PRICE
            assert await refunded(db, generation_id) == [PRICE]
        else:
            assert status == GenerationStatus.running
            assert await refunded(db, generation_id) == []
            assert await lifecycle.cancel(db, generation_id) is None  # and stays refused
    balance, total = await balance_and_ledger_sum(db)
    assert balance == total


async def test_the_mark_on_its_own_goes_with_kept_results_and_is_written_once(db: Database) -> None:
    """The mark as a unit of its own writes the results kept for the journal's next write with it, and
    a second mark (a rerun) finds it journaled and begins again, writing nothing twice."""
    generation_id = await running_generation(db, "kept")
    steps = StepJournal(db, generation_id)
    await steps.keep("prediction:result", {"status": "succeeded"})
    assert await lifecycle.mark_delivery(db, steps)
    rerun = StepJournal(db, generation_id)
    journal = await rerun.load()
    assert set(journal) == {lifecycle.DELIVERING_STEP, "prediction:result"}
    assert journal["prediction:result"] == {"status": "succeeded"}
    assert await lifecycle.mark_delivery(db, rerun)
    assert (await StepJournal(db, generation_id).load()) == journal


@pytest.mark.parametrize("refund", [0, 1])
async def test_a_settling_that_comes_after_a_cancel_changes_nothing(db: Database, refund: int) -> None:
    """The generation ends once: settling one a cancellation ended (and refunded in full) writes no
    status, no refund and no journal of its own."""
    generation_id = await running_generation(db, f"settle-after-cancel-{refund}")
    assert await lifecycle.cancel(db, generation_id) is not None
    async with db.sessions() as session:
        generation = await session.get(Generation, generation_id)
    assert generation is not None
    steps = StepJournal(db, generation_id)
    settled = await lifecycle.settle_journaled(
        db, steps, {"notify_done": 7}, generation, GenerationStatus.done, refund, result={"urls": []}
    )
    assert settled is False
    async with db.sessions() as session:
        status = await session.scalar(select(Generation.status).where(Generation.id == generation_id))
    assert status == GenerationStatus.canceled
    assert await StepJournal(db, generation_id).load() == {}
    assert await refunded(db, generation_id) == [PRICE]
    assert await balance_and_ledger_sum(db) == (BONUS, BONUS)


@pytest.mark.parametrize("refund", [0, 1])
async def test_a_settling_ends_the_generation_with_its_journal(db: Database, refund: int) -> None:
    generation_id = await running_generation(db, f"settle-{refund}")
    async with db.sessions() as session:
        generation = await session.get(Generation, generation_id)
    assert generation is not None
    steps = StepJournal(db, generation_id)
    await steps.keep("prediction:result", {"status": "succeeded"})
    settled = await lifecycle.settle_journaled(
        db, steps, {"notify_done": 7}, generation, GenerationStatus.done, refund, result={"urls": ["u"]}
    )
    assert settled is True
    async with db.sessions() as session:
        ended = await session.get(Generation, generation_id)
    assert ended is not None
    assert (ended.status, ended.refunded, ended.result, ended.lease_owner) == (
        GenerationStatus.done,
        refund,
        {"urls": ["u"]},
        None,
    )
    assert ended.finished_at is not None
    journal = await StepJournal(db, generation_id).load()
    assert journal == {"notify_done": 7, "prediction:result": {"status": "succeeded"}}
    assert await refunded(db, generation_id) == ([refund] if refund else [])
    assert await balance_and_ledger_sum(db) == (BONUS - PRICE + refund, BONUS - PRICE + refund)
    # Once ended, a second settling (a rerun after a crash) changes nothing.
    again = await lifecycle.settle_journaled(db, steps, {}, generation, GenerationStatus.done, refund)
    assert again is False
    assert await refunded(db, generation_id) == ([refund] if refund else [])
