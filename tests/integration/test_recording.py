"""Recording a generation and its charge in one statement (generation/recording.py; on SQLite one
trip to the connection's thread): the money rules of the transaction it replaces (SPEC §4.1) hold,
under concurrency too, on both databases."""

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from generation import ledger
from generation.plan import PlanMode, store_mode
from generation.recording import Flags, Recorded, record_and_charge
from generation.store import Database, Generation, GenerationStatus, LedgerEntry, Plan, User
from generation.users import ensure_user
from migrations.runner import upgrade
from tests.integration.conftest import Trips


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    await asyncio.to_thread(upgrade, database_url)
    database = Database(database_url)
    yield database
    await database.close()


async def new_user(db: Database, balance: int) -> int:
    async with db.transaction() as session:
        user, _ = await ensure_user(session, "main", 1, username=None, language="en")
        if balance:
            await ledger.credit(session, user.id, balance, "grant:test")
        return user.id


def a_generation(user_id: int, price: int, key: str | None = None) -> Generation:
    now = datetime.now(UTC)
    return Generation(
        id=uuid.uuid4().hex,
        request_key=key or uuid.uuid4().hex,
        kind="text_to_image",
        user_id=user_id,
        bot_name="main",
        chat_id=1,
        model="flux-schnell",
        request={"prompt": "a fox", "count": price},
        plan=Plan.B.value,
        status=GenerationStatus.queued,
        attempts=0,
        lease_owner=None,
        lease_expires_at=None,
        failures=0,
        units=max(price, 1),
        unit_price=1,
        price=price,
        refunded=0,
        created_at=now,
        updated_at=now,
    )


NO_FLAGS: Flags = (None, None)


async def record(db: Database, generation: Generation, flags: Flags = NO_FLAGS) -> Recorded:
    async with db.direct_writes(urgent=True) as direct:  # as the dispatcher records
        return await record_and_charge(direct, generation, flags)


def written(balance: int, before: int) -> Recorded:
    return Recorded(seen=None, balance=balance, balance_before=before, flags=NO_FLAGS, stale=False)


async def money(db: Database, user_id: int) -> tuple[int, int, int]:
    """The balance, the ledger's sum, and how many generations are recorded."""
    async with db.sessions() as session:
        balance = await session.scalar(select(User.balance).where(User.id == user_id))
        total = await session.scalar(
            select(func.sum(LedgerEntry.amount)).where(LedgerEntry.user_id == user_id)
        )
        count = await session.scalar(select(func.count()).select_from(Generation))
    return int(balance or 0), int(total or 0), int(count or 0)


async def test_a_generation_is_recorded_with_its_charge(db: Database) -> None:
    user_id = await new_user(db, balance=10)
    generation = a_generation(user_id, price=3)
    assert await record(db, generation) == written(7, 10)
    async with db.sessions() as session:
        stored = await session.get(Generation, generation.id)
        entry = await session.scalar(
            select(LedgerEntry).where(LedgerEntry.operation_key == ledger.charge_key(generation.id))
        )
    assert stored is not None
    assert (stored.request_key, stored.request, stored.status, stored.price) == (
        generation.request_key,
        {"prompt": "a fox", "count": 3},
        GenerationStatus.queued,
        3,
    )
    assert entry is not None
    assert (entry.amount, entry.balance_after, entry.generation_id) == (-3, 7, generation.id)
    assert await money(db, user_id) == (7, 7, 1)


async def test_a_balance_that_does_not_cover_it_records_nothing(db: Database) -> None:
    user_id = await new_user(db, balance=2)
    assert await record(db, a_generation(user_id, price=3)) == Recorded(
        seen=None, balance=None, balance_before=2, flags=NO_FLAGS, stale=False
    )
    assert await money(db, user_id) == (2, 2, 0)


async def test_a_free_generation_is_recorded_without_a_ledger_row(db: Database) -> None:
    user_id = await new_user(db, balance=0)
    assert await record(db, a_generation(user_id, price=0)) == written(0, 0)
    assert await money(db, user_id) == (0, 0, 1)


async def test_a_request_key_seen_before_answers_its_generation_and_charges_nothing(db: Database) -> None:
    user_id = await new_user(db, balance=10)
    first = a_generation(user_id, price=3, key="tg:main:1:42")
    await record(db, first)
    again = await record(db, a_generation(user_id, price=3, key="tg:main:1:42"))
    assert again.seen == first.id
    assert again.balance is None
    assert await money(db, user_id) == (7, 7, 1)


async def test_concurrent_records_never_overdraw(db: Database) -> None:
    user_id = await new_user(db, balance=10)
    results = await asyncio.gather(*(record(db, a_generation(user_id, price=3)) for _ in range(12)))
    assert sum(result.balance is not None for result in results) == 3  # 9 of 10 stars
    assert sorted(result.balance for result in results if result.balance is not None) == [1, 4, 7]
    assert await money(db, user_id) == (1, 1, 3)


async def test_concurrent_duplicates_record_and_charge_once(db: Database) -> None:
    user_id = await new_user(db, balance=10)

    async def one() -> Recorded | None:
        try:
            return await record(db, a_generation(user_id, price=3, key="http:main:same-key"))
        except IntegrityError:  # a duplicate that committed first: the whole statement is undone
            return None

    results = await asyncio.gather(*(one() for _ in range(8)))
    assert sum(result is not None and result.balance is not None for result in results) == 1
    assert await money(db, user_id) == (7, 7, 1)


async def test_a_plan_chosen_by_flags_changed_since_records_nothing_and_tells_them(db: Database) -> None:
    """The plan is chosen by the flags the previous record saw: if `/plan` changed them meanwhile,
    nothing is written (the caller chooses again by the flags that come back)."""
    user_id = await new_user(db, balance=10)
    await store_mode(db, PlanMode.b)
    stale = await record(db, a_generation(user_id, price=3))
    assert (stale.seen, stale.balance, stale.stale, stale.flags) == (None, None, True, ("b", None))
    assert await money(db, user_id) == (10, 10, 0)
    fresh = await record(db, a_generation(user_id, price=3), stale.flags)
    assert (fresh.balance, fresh.stale) == (7, False)
    assert await money(db, user_id) == (7, 7, 1)


async def test_a_failure_after_the_charge_undoes_the_charge(db: Database) -> None:
    """The ledger's row is written last; when it cannot be (its key taken, here by hand), nothing of
    the record stays: neither the generation nor the balance's change."""
    user_id = await new_user(db, balance=10)
    generation = a_generation(user_id, price=3)
    async with db.transaction() as session:
        await ledger.credit(session, user_id, 1, ledger.charge_key(generation.id))
    with pytest.raises(IntegrityError):
        await record(db, generation)
    assert await money(db, user_id) == (11, 11, 0)
    assert (await record(db, a_generation(user_id, price=3))).balance == 8  # the next one is recorded


async def test_on_sqlite_a_record_is_one_trip_to_the_connections_thread(
    sqlite_url: str, count_sqlite_trips: Callable[[], Trips]
) -> None:
    await asyncio.to_thread(upgrade, sqlite_url)
    db = Database(sqlite_url)
    try:
        user_id = await new_user(db, balance=10)
        await record(db, a_generation(user_id, price=3))  # the writes' connection opened: not counted
        trips = count_sqlite_trips()
        assert await record(db, a_generation(user_id, price=3)) == written(4, 7)
        assert trips.count == 1  # BEGIN IMMEDIATE, the lookup, the charge, both INSERTs and COMMIT
        assert (await record(db, a_generation(user_id, price=5))).balance is None
        assert trips.count == 2
        assert await money(db, user_id) == (4, 4, 2)
    finally:
        await db.close()
