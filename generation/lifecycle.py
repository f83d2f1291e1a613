"""A generation's life in one place: every status change, the lease, and the money rule.

    recorded (queued, charged)  --claim-->  running (leased)  --settle-->  done | failed
         |  Plan A enqueue failed: moved to Plan B            |  a try that may pass: released, queued again
         +--cancel-->  canceled (refunded)  <--cancel---------+

Statuses are the SPEC's: queued, running, done, failed, canceled. A generation waiting for a slot or
for the provider, or being delivered, is `running` (Plan A releases its lease while it waits; the
journal says how far it got). Each change is one conditional UPDATE, so two runners, a runner and a
cancellation, or the two plans never both win: that is what keeps a generation on one plan, run once,
refunded once.

The money rule: what was delivered is paid, the rest is refunded once (`refund:<generation>` is
unique in the ledger), whether the generation ends done, failed or canceled.

Delivery and cancellation exclude each other: a runner journals `delivering` (under the generation's
row lock, only while it runs) before the result may reach the chat, and a cancellation takes the same
lock and reads that mark before it changes the status. Whichever comes first wins: a cancellation
before the mark refunds in full and nothing is sent; after it, the cancellation is refused (the user
may already have the result) and the runner settles, paying for what was delivered.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from sqlalchemy import Integer, bindparam, select, update
from sqlalchemy.ext.asyncio import AsyncSession

import metrics
from generation import ledger
from generation.direct_statements import Prepared, Trip
from generation.steps import STEPS_OF, StepJournal
from generation.store import (
    Database,
    Generation,
    GenerationStatus,
    LedgerEntry,
    Plan,
    Step,
    User,
    as_utc,
    detached,
    statements,
)

ACTIVE = (GenerationStatus.queued, GenerationStatus.running)
DELIVER_STEP = "deliver"
# Journaled just before the result is handed to the chat; from then on a cancellation is refused.
DELIVERING_STEP = "delivering"


class NotRunning(Exception):
    """The generation ended (a cancellation, which refunded it) before its result was handed over:
    nothing is sent, and the run stops without settling."""


def refund_due(generation: Generation, delivered_units: int) -> int:
    """The money rule: the price of what was not delivered."""
    delivered_price = min(generation.price, delivered_units * generation.unit_price)
    return generation.price - delivered_price


def delivered_units(deliver_result: Any) -> int:
    """Units a journaled `deliver` step reached the chat with (its message ids), 0 if none."""
    return len(deliver_result) if isinstance(deliver_result, list) else 0


@dataclass
class Claim:
    """What a runner needs to run a claimed generation, read in the claim's own transaction."""

    generation: Generation
    user: User
    journal: dict[str, Any]  # the step journal as it stands


class SlotReservation(Protocol):
    """Concurrency slots taken for a generation before it is recorded (fallback/inline.py)."""

    def give_back(self) -> None: ...


@dataclass(frozen=True)
class Reserved:
    """A generation recorded already claimed by its Plan B runner, because its slots had room at
    once: its run goes straight to the pipeline, with no claim of its own and no wait for a turn (one
    write transaction, not two, before the provider's call)."""

    user: User
    reservation: SlotReservation

    def claim(self, generation: Generation) -> Claim:
        return Claim(generation, self.user, {})  # claimed as it was recorded: nothing journaled yet


async def claim(db: Database, generation_id: str, plan: Plan, owner: str, lease: float) -> Claim | None:
    """Take the right to run a generation, atomically: only on its own plan, only if nobody holds it.

    Claimable: queued, or running under a lease that expired (its runner died). The generation, its
    user and its journal come back with the claim (on PostgreSQL the user in the claim's own
    statement; on SQLite all three in one trip to the connection's thread), so the run starts
    without re-reading."""
    now = time.time()
    values = {
        "claim_id": generation_id,
        "claim_plan": plan.value,
        "claim_owner": owner,
        "claim_now": now,
        "claim_until": now + lease,
    }
    # The UPDATE is the claim, atomic by itself; what is read after it belongs to the claimant. It is
    # not waited on to reach the disk (on a SQLite file: `durable=False`): every other process sees it
    # once committed, and a power cut that loses it leaves the generation queued, to be claimed again.
    # The run's first write that matters (a provider job's id, journaled before it is awaited) waits
    # for its sync, which covers the claim, written before it.
    async with db.direct_writes(durable=False) as direct:
        if not db.is_postgresql:  # the claim, its user and its journal in one trip to SQLite's thread
            taken = await direct.in_one_trip(lambda trip: _claim_in_trip(trip, values))
            if taken is None:
                return None
            claimed, found, journal = taken
            return Claim(detached(Generation, claimed), detached(User, found), dict(journal))
        row = (await direct.execute(_CLAIM_WITH_USER, values)).first()  # the user in the same statement
        if row is None:
            return None
        generation_columns = len(Generation.__table__.columns)
        generation = detached(Generation, row[:generation_columns])
        user = detached(User, row[generation_columns:])
        if generation.attempts == 1:  # its first claim: no runner has journaled anything yet
            return Claim(generation, user, {})
        rows = await direct.execute(STEPS_OF, {"generation_id": generation_id})
        return Claim(generation, user, {name: result for name, result in rows})


def _claim_in_trip(
    trip: Trip, values: dict[str, Any]
) -> tuple[tuple[Any, ...], tuple[Any, ...], list[tuple[Any, ...]]] | None:
    claimed = trip.execute(_CLAIM_ALONE, values).first()
    if claimed is None:
        return None
    user = trip.execute(_USER_BY_ID, {"user_id": claimed[_USER_ID_AT]}).one()
    first_claim = claimed[_ATTEMPTS_AT] == 1  # no runner has journaled anything yet
    journal = [] if first_claim else trip.execute(STEPS_OF, {"generation_id": values["claim_id"]}).rows
    return claimed, user, journal


# Claimable: queued, or running under a lease that expired (its runner died). Built once.
_CLAIM = (
    update(Generation)
    .where(
        Generation.id == bindparam("claim_id"),
        Generation.plan == bindparam("claim_plan"),
        (Generation.status == GenerationStatus.queued)
        | (
            (Generation.status == GenerationStatus.running)
            & (
                (Generation.lease_expires_at.is_(None))
                | (Generation.lease_expires_at < bindparam("claim_now"))
            )
        ),
    )
    .values(
        status=GenerationStatus.running,
        attempts=Generation.attempts + 1,
        lease_owner=bindparam("claim_owner"),
        lease_expires_at=bindparam("claim_until"),
    )
    .returning(*Generation.__table__.columns)
)
_CLAIM_ALONE = Prepared(_CLAIM)
_CLAIMED = _CLAIM.cte("claimed")
_CLAIM_WITH_USER = Prepared(
    select(_CLAIMED, *User.__table__.columns).join_from(_CLAIMED, User, User.id == _CLAIMED.c.user_id),
    only="postgresql",
)
_USER_BY_ID = Prepared(select(*User.__table__.columns).where(User.id == bindparam("user_id")))
_GENERATION_COLUMNS = [column.name for column in Generation.__table__.columns]
_USER_ID_AT, _ATTEMPTS_AT = _GENERATION_COLUMNS.index("user_id"), _GENERATION_COLUMNS.index("attempts")


async def release(db: Database, generation_id: str, owner: str, *, failed: bool = False) -> None:
    """Give a claim back without finishing (a retry will claim it again); `failed` counts the try."""
    values = {"lease_id": generation_id, "leaseholder": owner, "failed": 1 if failed else 0}
    async with db.direct_writes() as direct:
        await direct.execute(_RELEASE, values)


_OWN_LEASE = (Generation.id == bindparam("lease_id"), Generation.lease_owner == bindparam("leaseholder"))
_RELEASE = Prepared(
    update(Generation)
    .where(*_OWN_LEASE)
    .values(
        lease_owner=None,
        lease_expires_at=None,
        failures=Generation.failures + bindparam("failed", type_=Integer),
    )
)
_RENEW = Prepared(update(Generation).where(*_OWN_LEASE).values(lease_expires_at=bindparam("lease_until")))
_LEASE_HOLDER = Prepared(select(Generation.lease_owner).where(Generation.id == bindparam("lease_id")))


async def renew_lease(db: Database, generation_id: str, owner: str, lease: float) -> bool:
    """Extend this runner's lease; False when another runner holds the generation now (this one was
    too slow to renew in time and was taken for dead): it must stop, the other goes on."""
    values = {"lease_id": generation_id, "leaseholder": owner, "lease_until": time.time() + lease}
    async with db.direct_writes() as direct:
        if (await direct.execute(_RENEW, values)).rowcount:
            return True
        holder = (await direct.execute(_LEASE_HOLDER, {"lease_id": generation_id})).scalar()
    return holder is None  # released or settled meanwhile: nobody else runs it


async def move_to_plan_b(db: Database, generation_id: str, *, claimed_by: str | None = None) -> bool:
    """Hand a Plan A generation that could not be enqueued to Plan B, unless a worker already took it.
    `claimed_by`: it was recorded claimed by the worker of this process (whose job the enqueue was to
    take for it, and which never ran it): it goes back to queued, as if recorded so, for Plan B's
    runner to claim."""
    values = {"moving_id": generation_id, "recorded_claimed_by": claimed_by}
    async with db.direct_writes() as direct:
        moved = await direct.execute(_MOVE_TO_PLAN_B, values)
    return bool(moved.rowcount)


async def unclaim(db: Database, generation_id: str, claimed_by: str) -> bool:
    """Undo a record's claim for the worker of this process (its job's first try), which is not
    running it now (its job waits for a slot, or Redis failed it): queued again, as if recorded so,
    for whichever runner claims it next."""
    async with db.direct_writes() as direct:
        undone = await direct.execute(
            _UNCLAIM, {"unclaim_id": generation_id, "recorded_claimed_by": claimed_by}
        )
    return bool(undone.rowcount)


# A record's claim for the worker here: running, claimed once, by it.
_RECORDED_CLAIMED_BY = (
    (Generation.status == GenerationStatus.running)
    & (Generation.attempts == 1)
    & (Generation.lease_owner == bindparam("recorded_claimed_by"))
)
_AS_RECORDED_QUEUED = dict(
    status=GenerationStatus.queued, attempts=0, lease_owner=None, lease_expires_at=None
)
_UNCLAIM = Prepared(
    update(Generation)
    .where(Generation.id == bindparam("unclaim_id"), _RECORDED_CLAIMED_BY)
    .values(**_AS_RECORDED_QUEUED)
)


def as_moved_to_plan_b(generation: Generation) -> None:
    """The generation as `move_to_plan_b` left it (the caller's copy)."""
    generation.plan = Plan.B
    generation.status = GenerationStatus.queued
    generation.attempts = 0
    generation.lease_owner = None
    generation.lease_expires_at = None


_MOVE_TO_PLAN_B = Prepared(
    update(Generation)
    .where(
        Generation.id == bindparam("moving_id"),
        Generation.plan == Plan.A,
        (Generation.status == GenerationStatus.queued) | _RECORDED_CLAIMED_BY,
    )
    .values(plan=Plan.B, **_AS_RECORDED_QUEUED)
)


async def balance_after_refund(db: Database, generation: Generation, refund: int) -> int | None:
    """The balance once this generation's refund is in, or None when a cancellation ended it (and
    refunded it) meanwhile. One read: the final message says the balance before the refund commits,
    so that one transaction can journal the message, refund and end the generation."""
    values = {"generation_id": generation.id, "refund_key": ledger.refund_key(generation.id)}
    async with db.direct_reads() as direct:
        status, balance, refund_in = (await direct.execute(_BALANCE_AND_REFUND, values)).one()
    if status == GenerationStatus.canceled:
        return None
    return int(balance) if refund_in or refund <= 0 else int(balance) + refund


_BALANCE_AND_REFUND = Prepared(
    select(
        Generation.status,
        User.balance,
        select(LedgerEntry.id).where(LedgerEntry.operation_key == bindparam("refund_key")).exists(),
    )
    .join(User, User.id == Generation.user_id)
    .where(Generation.id == bindparam("generation_id"))
)


async def settle(
    session: AsyncSession,
    generation: Generation,
    status: GenerationStatus,
    refund: int,
    *,
    result: dict[str, Any] | None = None,
    error: str | None = None,
) -> bool:
    """End a running generation as done or failed and refund what was not delivered, in the caller's
    transaction; False (nothing changed) when a cancellation ended it first."""
    finished = await (await statements(session)).execute(
        _ENDING, _ending_values(generation, status, refund, result, error)
    )
    if not finished.rowcount:
        return False
    if refund > 0:
        await ledger.credit(
            session, generation.user_id, refund, ledger.refund_key(generation.id), generation_id=generation.id
        )
    return True


async def settle_journaled(
    db: Database,
    steps: StepJournal,
    journal: dict[str, Any],
    generation: Generation,
    status: GenerationStatus,
    refund: int,
    *,
    result: dict[str, Any] | None = None,
    error: str | None = None,
) -> bool:
    """`settle` with the steps of `journal` (the final message) committed with it, as a unit of its
    own; the journal is written only when this settles the generation (a cancellation that came
    first has ended it and told the user). With nothing to refund, in one statement on PostgreSQL and
    in one trip to the connection's thread on SQLite."""
    if refund <= 0:
        values = _ending_values(generation, status, refund, result, error)
        async with db.direct_writes() as direct:
            if db.is_postgresql:
                return await steps.add_many_if(direct, journal, _ENDED, values)
            return await steps.add_many_if_in_one_trip(direct, journal, _ENDING_RETURNING, values)
    async with db.transaction() as session:
        settled = await settle(session, generation, status, refund, result=result, error=error)
        if settled and journal:
            await steps.add_many(session, journal)
        return settled


# The UPDATE that ends a running generation (and nothing once a cancellation ended it), built once with
# bound parameters (`_ending_values`): as a CTE it is a part of `settle_journaled`'s one statement,
# whose building costs more than running it.
_ENDING = (
    update(Generation)
    .where(Generation.id == bindparam("ending_id"), Generation.status == GenerationStatus.running)
    .values(
        status=bindparam("ending_status"),
        refunded=bindparam("ending_refund"),
        result=bindparam("ending_result", type_=Generation.result.type),
        error=bindparam("ending_error"),
        lease_owner=None,
        lease_expires_at=None,
        finished_at=bindparam("ending_at", type_=Generation.finished_at.type),
    )
)
_ENDED = _ENDING.returning(Generation.id).cte("ended")
_ENDING_RETURNING = Prepared(_ENDING.returning(Generation.id), only="sqlite")


def _ending_values(
    generation: Generation,
    status: GenerationStatus,
    refund: int,
    result: dict[str, Any] | None,
    error: str | None,
) -> dict[str, Any]:
    return {
        "ending_id": generation.id,
        "ending_status": status.value,
        "ending_refund": refund,
        "ending_result": result,
        "ending_error": error,
        "ending_at": datetime.now(UTC),  # to the microsecond, as created_at is
    }


@dataclass(frozen=True)
class Canceled:
    generation: Generation
    refund: int
    balance: int


async def cancel(db: Database, generation_id: str) -> Canceled | None:
    """Final at once and refunded in full, in one transaction; None when the generation had already
    ended or its delivery has begun (`begin_delivery`: the runner settles it, paying for what reached
    the chat). A runner still working finds the status final and stops."""
    canceled = await _cancel_and_refund(db, generation_id)
    if canceled is not None:  # committed: counted once, as the settling of a run is
        moved = canceled.generation
        age = metrics.since(as_utc(moved.created_at).timestamp())
        metrics.ended(
            moved.kind, moved.model, moved.plan, GenerationStatus.canceled.value, canceled.refund, age
        )
    return canceled


async def _cancel_and_refund(db: Database, generation_id: str) -> Canceled | None:
    async with db.transaction() as session:
        # The row is locked before the journal is read: a delivery beginning at this very moment holds
        # the lock until its mark commits, and this read, a statement of its own, then sees the mark
        # (PostgreSQL reads each statement afresh; on SQLite writers take turns anyway).
        status = await session.scalar(
            select(Generation.status).where(Generation.id == generation_id).with_for_update(key_share=True)
        )
        if status not in ACTIVE or await _delivery_begun(session, generation_id):
            return None
        moved = await session.scalar(
            update(Generation)
            .where(Generation.id == generation_id, Generation.status.in_(ACTIVE))
            .values(
                status=GenerationStatus.canceled,
                error="canceled by the user",
                lease_owner=None,
                lease_expires_at=None,
                finished_at=datetime.now(UTC),  # to the microsecond, as created_at is
            )
            .returning(Generation)
        )
        if moved is None:
            return None
        refund = refund_due(moved, 0)  # nothing was handed to the chat
        balance = await ledger.balance_of(session, moved.user_id)
        if refund > 0:
            posting = await ledger.credit(
                session, moved.user_id, refund, ledger.refund_key(generation_id), generation_id=generation_id
            )
            refund = refund if posting.applied else 0
            balance = posting.balance
            moved.refunded = moved.refunded + refund
        return Canceled(generation=moved, refund=refund, balance=balance)


async def begin_delivery(session: AsyncSession, steps: StepJournal) -> bool:
    """Journal, in the caller's transaction, that the result is about to be handed to the chat, so
    that a cancellation from now on is refused rather than refunding what the user may get. False
    (nothing journaled) when a cancellation ended the generation first: then nothing may be sent.

    Under the generation's row lock, as `cancel` takes it: the two never both win. A rerun (a retry,
    a restarted runner) finds the mark already journaled and delivers again; the user pays once."""
    running = await (await statements(session)).scalar(_RUNNING_LOCKED, {"running_id": steps.generation_id})
    if running is None:
        return False
    if not await steps.is_done(DELIVERING_STEP):
        await steps.add(session, DELIVERING_STEP, time.time())
    return True


async def mark_delivery(db: Database, steps: StepJournal) -> bool:
    """`begin_delivery` as a unit of its own (nothing else commits with the mark: an image, a video
    handed to the chat). On PostgreSQL in one statement, the row locked as `cancel` locks it and the
    mark written only if it still runs; on SQLite in one transaction run in one trip to the
    connection's thread (writers take turns at the database's lock anyway)."""
    mark = {} if await steps.is_done(DELIVERING_STEP) else {DELIVERING_STEP: time.time()}
    running = {"running_id": steps.generation_id}
    async with db.direct_writes() as direct:
        if db.is_postgresql:
            return await steps.add_many_if(direct, mark, _RUNNING_LOCKED_CTE, running)
        return await steps.add_many_if_in_one_trip(direct, mark, _RUNNING_ALONE, running)


# The generation's id while it runs, its row locked FOR NO KEY UPDATE, the lock an UPDATE takes: it
# excludes `cancel` but lets journal rows (whose foreign key shares the row) be written meanwhile.
_RUNNING_LOCKED = (
    select(Generation.id)
    .where(Generation.id == bindparam("running_id"), Generation.status == GenerationStatus.running)
    .with_for_update(key_share=True)
)
_RUNNING_LOCKED_CTE = _RUNNING_LOCKED.cte("running")
_RUNNING_ALONE = Prepared(_RUNNING_LOCKED, only="sqlite")  # no row locks: the write lock is the database's


async def being_delivered(db: Database, generation_id: str) -> bool:
    """Whether the generation still runs with its delivery begun: what a refused cancellation tells
    the user ("already being sent")."""
    async with db.sessions() as session:
        status = await session.scalar(select(Generation.status).where(Generation.id == generation_id))
        return status in ACTIVE and await _delivery_begun(session, generation_id)


async def _delivery_begun(session: AsyncSession, generation_id: str) -> bool:
    """The mark, or (journals written before the mark existed) the delivery itself."""
    found = await session.scalar(
        select(Step.name)
        .where(Step.generation_id == generation_id, Step.name.in_((DELIVERING_STEP, DELIVER_STEP)))
        .limit(1)
    )
    return found is not None


async def orphans(
    db: Database,
    plan: Plan,
    *,
    older_than: float = 0.0,
    untouched_for: float | None = None,
    unclaimed_older_than: float = 0.0,
) -> list[tuple[str, bool]]:
    """Unfinished generations of a plan that no live runner holds (no lease, or an expired one) and
    that were recorded at least `older_than` seconds ago (`unclaimed_older_than` for one never claimed
    yet): (id, whether its runner is gone). A runner is gone when its lease expired, or (with
    `untouched_for`) when nobody has touched the generation for that long since a runner released it
    (a worker that lost Redis just as it handed the job back leaves Redis believing the job still
    runs). Plan A's reconciler re-enqueues them; Plan B's runner resumes them."""
    now = time.time()
    async with db.sessions() as session:
        rows = await session.execute(
            select(
                Generation.id,
                Generation.created_at,
                Generation.updated_at,
                Generation.lease_expires_at,
                Generation.attempts,
            ).where(
                Generation.plan == plan,
                Generation.status.in_(ACTIVE),
                (Generation.lease_expires_at.is_(None)) | (Generation.lease_expires_at < now),
            )
        )
        found = []
        for id_, created, updated, lease, attempts in rows:
            age = _age(created, now)
            if age < older_than or (not attempts and age < unclaimed_older_than):
                continue
            untouched = untouched_for is not None and _age(updated, now) >= untouched_for
            # One never claimed had no runner to die: it waits (for a slot, in a line) with its job.
            found.append((id_, lease is not None or (untouched and attempts > 0)))
        return found


def still_orphaned(generation: Generation | None) -> bool:
    """Whether a generation found by `orphans` still is one: read again just before acting on it, as
    the snapshot ages while the reconciler works through thousands."""
    if generation is None or GenerationStatus(generation.status).is_final:
        return False
    return generation.lease_expires_at is None or generation.lease_expires_at < time.time()


def _age(created: datetime | None, now: float) -> float:
    return float("inf") if created is None else now - as_utc(created).timestamp()
