"""The money rules (SPEC §4.1) and the step journal, on SQLite and PostgreSQL, under concurrency."""

import asyncio

import pytest
from sqlalchemy import func, select

from generation import ledger
from generation.steps import StepJournal
from generation.store import Database, Generation, LedgerEntry, User
from generation.users import ensure_user


async def new_user(db: Database, balance: int = 0, telegram_id: int = 1) -> int:
    async with db.transaction() as session:
        user, _ = await ensure_user(session, "main", telegram_id, username=None, language="en")
        if balance:
            await ledger.credit(session, user.id, balance, f"grant:test:{telegram_id}")
        return user.id


async def new_generation(db: Database, generation_id: str, user_id: int) -> None:
    """A Plan A image generation of `user_id`, its request key named after its id."""
    async with db.transaction() as session:
        session.add(
            Generation(
                id=generation_id,
                request_key=f"key-{generation_id}",
                kind="text_to_image",
                user_id=user_id,
                bot_name="main",
                chat_id=1,
                model="flux-schnell",
                request={},
                plan="A",
            )
        )


async def ledger_sum(db: Database, user_id: int) -> int:
    async with db.sessions() as session:
        total = await session.scalar(
            select(func.sum(LedgerEntry.amount)).where(LedgerEntry.user_id == user_id)
        )
        return int(total or 0)


async def test_concurrent_charges_never_overdraw(db: Database) -> None:
    user_id = await new_user(db, balance=10)

    async def charge(index: int) -> bool:
        try:
            async with db.transaction() as session:
                await ledger.charge(session, user_id, 3, f"charge:race-{index}")
            return True
        except ledger.InsufficientBalance:
            return False

    results = await asyncio.gather(*(charge(index) for index in range(12)))
    assert sum(results) == 3  # 3 x 3 = 9 of 10 stars; the 4th would go negative
    async with db.sessions() as session:
        assert await ledger.balance_of(session, user_id) == 1
    assert await ledger_sum(db, user_id) == 1


async def test_refund_is_applied_once_even_when_raced(db: Database) -> None:
    user_id = await new_user(db, balance=5)

    async def refund() -> bool:
        async with db.transaction() as session:
            return (await ledger.credit(session, user_id, 4, "refund:gen-1")).applied

    applied = await asyncio.gather(*(refund() for _ in range(8)))
    assert applied.count(True) == 1
    async with db.sessions() as session:
        assert await ledger.balance_of(session, user_id) == 9
    assert await ledger_sum(db, user_id) == 9


async def test_insufficient_balance_says_how_much_is_needed(db: Database) -> None:
    user_id = await new_user(db, balance=2)
    with pytest.raises(ledger.InsufficientBalance) as caught:
        async with db.transaction() as session:
            await ledger.charge(session, user_id, 5, "charge:too-much")
    assert (caught.value.needed, caught.value.balance) == (5, 2)
    assert await ledger_sum(db, user_id) == 2


async def test_first_contact_from_many_updates_creates_one_user_and_one_bonus(db: Database) -> None:
    async def contact() -> int:
        async with db.transaction() as session:
            user, _ = await ensure_user(session, "main", 99, username="u", language="ru", new_user_bonus=7)
            return user.id

    ids = await asyncio.gather(*(contact() for _ in range(6)))
    assert len(set(ids)) == 1
    async with db.sessions() as session:
        user = await session.get(User, ids[0])
        assert user is not None and user.balance == 7 and user.language == "ru"
    assert await ledger_sum(db, ids[0]) == 7


async def test_step_journal_runs_a_step_once(db: Database) -> None:
    await new_generation(db, "g1", await new_user(db))
    calls = 0

    async def create() -> str:
        nonlocal calls
        calls += 1
        return "prediction-1"

    assert await StepJournal(db, "g1").run("create_prediction", create) == "prediction-1"
    # A rerun (new journal object, as after a restart) gets the saved id and does not call again.
    assert await StepJournal(db, "g1").run("create_prediction", create) == "prediction-1"
    assert calls == 1


async def test_a_paid_step_is_journaled_even_when_the_stop_insists(db: Database) -> None:
    await new_generation(db, "g2", await new_user(db))
    answered = asyncio.Event()
    calls = 0

    async def paid_create() -> str:
        nonlocal calls
        calls += 1
        await answered.wait()  # the provider takes its time to answer
        return "prediction-2"

    run = asyncio.create_task(StepJournal(db, "g2").run("create_prediction", paid_create, shielded=True))
    await asyncio.sleep(0.05)
    run.cancel()  # the process is stopping...
    await asyncio.sleep(0.05)
    run.cancel()  # ...and told again
    await asyncio.sleep(0.05)
    answered.set()
    with pytest.raises(asyncio.CancelledError):
        await run
    # The paid call finished and was journaled: the next run continues from it, paying nothing again.
    assert await StepJournal(db, "g2").run("create_prediction", paid_create) == "prediction-2"
    assert calls == 1


async def test_several_steps_journaled_at_once_keep_a_result_journaled_first(db: Database) -> None:
    await new_generation(db, "g3", await new_user(db))
    # Another runner journaled the deadline first (a lease that expired under a live runner).
    await StepJournal(db, "g3").record("prediction:deadline", 100.5)
    steps = StepJournal(db, "g3")
    await steps.record_many({"prediction:id": "p-3", "prediction:deadline": 999.0, "note": {"a": [1, 2]}})
    expected = {"prediction:id": "p-3", "prediction:deadline": 100.5, "note": {"a": [1, 2]}}
    assert await steps.load() == expected
    assert await StepJournal(db, "g3").load() == expected
