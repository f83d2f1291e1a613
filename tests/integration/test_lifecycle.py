"""The lifecycle's orphan query (both plans' reconcilers) on SQLite and PostgreSQL."""

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import update

from generation import execution, lifecycle
from generation.steps import StepJournal
from generation.store import Database, Generation, GenerationStatus, Plan, get_generation
from generation.users import ensure_user
from migrations.runner import upgrade
from tests.integration.conftest import Trips


async def record(
    db: Database,
    key: str,
    *,
    lease_expires_at: float | None,
    touched_ago: float,
    status: GenerationStatus = GenerationStatus.running,
) -> str:
    async with db.transaction() as session:
        user, _ = await ensure_user(session, "main", 1, username=None, language="en")
        generation = Generation(
            request_key=key,
            kind="text_to_image",
            user_id=user.id,
            bot_name="main",
            model="flux-schnell",
            request={},
            plan=Plan.A,
            status=status,
            attempts=0 if status == GenerationStatus.queued else 1,  # running: claimed once at least
            lease_owner="w" if lease_expires_at else None,
            lease_expires_at=lease_expires_at,
        )
        session.add(generation)
        await session.flush()
        moment = datetime.now(UTC) - timedelta(seconds=touched_ago)
        await session.execute(
            update(Generation)
            .where(Generation.id == generation.id)
            .values(created_at=moment, updated_at=moment)
        )
        return generation.id


async def test_orphans_tell_a_dead_runner_from_a_waiting_one(db: Database) -> None:
    now = time.time()
    held = await record(db, "held", lease_expires_at=now + 30, touched_ago=60)
    expired = await record(db, "expired", lease_expires_at=now - 1, touched_ago=60)
    released_long_ago = await record(db, "released-long-ago", lease_expires_at=None, touched_ago=60)
    released_now = await record(db, "released-now", lease_expires_at=None, touched_ago=0)
    waiting_in_line = await record(
        db, "waiting", lease_expires_at=None, touched_ago=60, status=GenerationStatus.queued
    )

    found = dict(await lifecycle.orphans(db, Plan.A, untouched_for=30))
    assert held not in found  # a live runner holds it
    assert found[expired] is True  # its runner stopped renewing the lease
    assert found[released_long_ago] is True  # released, then nobody touched it: its job was lost
    assert found[released_now] is False  # released a moment ago: its job waits in Redis
    assert found[waiting_in_line] is False  # never claimed: no runner died, it waits for a slot
    # Without `untouched_for` only an expired lease tells of a dead runner; too fresh ones are left.
    assert dict(await lifecycle.orphans(db, Plan.A))[released_long_ago] is False
    assert released_now not in dict(await lifecycle.orphans(db, Plan.A, older_than=30))
    assert await lifecycle.orphans(db, Plan.B) == []


async def test_a_runner_whose_lease_another_took_over_stops(db: Database) -> None:
    generation_id = await record(db, "slow-runner", lease_expires_at=time.time() + 0.3, touched_ago=0)

    async def run_holding_the_lease() -> None:
        async with execution._heartbeat(db, generation_id, "w", lease=0.3):
            await asyncio.sleep(10)  # the pipeline's work

    runner = asyncio.create_task(run_holding_the_lease())
    await asyncio.sleep(0.05)
    async with db.transaction() as session:  # another runner claimed it (this one was taken for dead)
        await session.execute(
            update(Generation)
            .where(Generation.id == generation_id)
            .values(lease_owner="other", lease_expires_at=time.time() + 30)
        )
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(runner, timeout=2)


async def test_a_runner_keeps_going_once_its_generation_is_released_or_settled(db: Database) -> None:
    generation_id = await record(db, "settled", lease_expires_at=time.time() + 0.3, touched_ago=0)
    async with db.transaction() as session:
        await session.execute(
            update(Generation).where(Generation.id == generation_id).values(lease_owner=None)
        )
    async with execution._heartbeat(db, generation_id, "w", lease=0.3):
        await asyncio.sleep(0.4)  # beats find nobody else holding it: the run's tail goes on
    assert await lifecycle.renew_lease(db, generation_id, "w", 0.3)


async def test_an_id_no_generation_can_have_is_answered_none_without_a_query(db: Database) -> None:
    # Forged callback data (a Cancel or Repeat button) reaches get_generation as it is: PostgreSQL
    # refuses a NUL in a string with an error, which failed the update's handler.
    for forged in ("\x00", "a\x00b", "", "x" * 33, "../etc"):
        assert await get_generation(db, forged) is None


async def test_a_claim_brings_its_user_and_journal_and_the_mark_and_settle_yield_to_an_end(
    db: Database,
) -> None:
    """The hot path's writes around a run (generation/lifecycle.py): each one atomic, on both
    databases (on SQLite each a transaction run in one trip to the connection's thread)."""
    generation_id = await record(
        db, "claimed", lease_expires_at=None, touched_ago=0, status=GenerationStatus.queued
    )
    first = await lifecycle.claim(db, generation_id, Plan.A, "w1", lease=30)
    assert first is not None
    assert (first.generation.attempts, first.user.telegram_id, first.journal) == (1, 1, {})
    assert await lifecycle.claim(db, generation_id, Plan.A, "w2", lease=30) is None  # held
    steps = StepJournal(db, generation_id, journal=first.journal)
    await steps.keep("prediction:result", {"status": "succeeded"})  # goes with the mark
    assert await lifecycle.mark_delivery(db, steps)

    await lifecycle.release(db, generation_id, "w1")
    again = await lifecycle.claim(db, generation_id, Plan.A, "w2", lease=30)
    assert again is not None
    assert again.generation.attempts == 2
    assert set(again.journal) == {lifecycle.DELIVERING_STEP, "prediction:result"}
    steps = StepJournal(db, generation_id, journal=again.journal)
    assert await lifecycle.settle_journaled(
        db, steps, {"notify_done": 7}, again.generation, GenerationStatus.done, 0, result={"ok": True}
    )
    settled = await get_generation(db, generation_id)
    assert settled is not None
    assert (settled.status, settled.result, settled.lease_owner) == (
        GenerationStatus.done,
        {"ok": True},
        None,
    )
    # Ended: nothing more is marked, settled or journaled with them.
    late = StepJournal(db, generation_id)
    assert not await lifecycle.mark_delivery(db, late)
    assert not await lifecycle.settle_journaled(
        db, late, {"notify_failed": 1}, again.generation, GenerationStatus.failed, 0
    )
    assert set(await StepJournal(db, generation_id).load()) == {
        lifecycle.DELIVERING_STEP,
        "prediction:result",
        "notify_done",
    }


async def test_on_sqlite_the_claim_mark_and_settle_run_in_the_loops_thread(
    sqlite_url: str, count_sqlite_trips: Callable[[], Trips]
) -> None:
    await asyncio.to_thread(upgrade, sqlite_url)
    db = Database(sqlite_url)
    try:
        generation_id = await record(
            db, "trips", lease_expires_at=None, touched_ago=0, status=GenerationStatus.queued
        )
        trips = count_sqlite_trips()
        claim = await lifecycle.claim(db, generation_id, Plan.A, "w1", lease=30)
        assert claim is not None  # the claim, its user (its journal: a first claim)
        steps = StepJournal(db, generation_id, journal=claim.journal)
        assert await lifecycle.mark_delivery(db, steps)  # the running check and the mark
        assert await lifecycle.settle_journaled(
            db, steps, {"notify_done": 1}, claim.generation, GenerationStatus.done, 0
        )  # the end and its journal
        assert trips.count == 0  # each a transaction in the loop's thread, none handed to a connection's
        settled = await get_generation(db, generation_id)
        assert settled is not None and settled.status == GenerationStatus.done
        assert set(await StepJournal(db, generation_id).load()) == {lifecycle.DELIVERING_STEP, "notify_done"}
    finally:
        await db.close()


async def test_a_generation_recorded_claimed_by_the_worker_here_moves_to_plan_b_queued(db: Database) -> None:
    """An enqueue that failed after the record claimed the generation for this process's worker (the
    lease owner "w", its job's first try): it moves to Plan B as queued, for Plan B's runner to
    claim. A generation that another runner holds, or that was claimed more than once, stays."""
    now = time.time()
    recorded_claimed = await record(db, "recorded-claimed", lease_expires_at=now + 30, touched_ago=0)
    queued = await record(db, "queued", lease_expires_at=None, touched_ago=0, status=GenerationStatus.queued)
    assert not await lifecycle.move_to_plan_b(db, recorded_claimed)  # not said to be ours: stays
    assert not await lifecycle.move_to_plan_b(db, recorded_claimed, claimed_by="another")

    assert await lifecycle.move_to_plan_b(db, recorded_claimed, claimed_by="w")
    assert await lifecycle.move_to_plan_b(db, queued, claimed_by="w")  # queued: moves as ever
    for generation_id in (recorded_claimed, queued):
        moved = await get_generation(db, generation_id)
        assert moved is not None
        state = (moved.plan, moved.status, moved.attempts, moved.lease_owner, moved.lease_expires_at)
        assert state == (Plan.B, GenerationStatus.queued, 0, None, None)
        claim = await lifecycle.claim(db, generation_id, Plan.B, "inline", 60)  # Plan B's runner claims it
        assert claim is not None and claim.generation.attempts == 1

    claimed_twice = await record(db, "claimed-twice", lease_expires_at=now + 30, touched_ago=0)
    async with db.transaction() as session:
        await session.execute(update(Generation).where(Generation.id == claimed_twice).values(attempts=2))
    assert not await lifecycle.move_to_plan_b(db, claimed_twice, claimed_by="w")  # a worker ran it
