"""The dispatcher: records a generation (user, generation row, charge: one transaction), then runs it on
Plan A (enqueue) or Plan B (inline). The only file that knows both plans.

Never lost, never twice: the generation is committed before any plan sees it; an enqueue that fails
or times out moves it to Plan B only if no worker has claimed it yet (one conditional UPDATE), and each
runner claims it on its own plan only, so at most one plan ever runs it.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, TypeGuard, cast

from loguru import logger
from sqlalchemy import func, insert, select
from sqlalchemy.exc import IntegrityError

import metrics
from generation import ledger, lifecycle
from generation.cancellation import Canceled, cancel_generation
from generation.plan import (
    CircuitBreaker,
    PlanMode,
    StoredPlanFlags,
    mode_from_environment,
    plan_flag_columns,
    plan_flags_from,
    plan_for,
    store_mode,
    store_plan_b_share,
    stored_mode,
    stored_plan_b_share,
)
from generation.recording import RECORDED_COLUMNS, Flags, record_and_charge
from generation.registry import spec_of
from generation.requests import ValidRequest
from generation.services import Services
from generation.store import Generation, GenerationStatus, Plan, User, statements, unattached
from generation.users import ensure_user, read_user
from metrics import InFlight


class WorkerPlace(Protocol):
    """A place held in the worker this process embeds (jobs/queue.py `HeldPlace`)."""

    # Whom the job's first try claims as: a generation recorded claimed by it needs no claim. None
    # when it is not to be (its worker's jobs wait for slots now: the claim would be undone).
    owner: str | None

    def give_back(self) -> None: ...


class JobQueue(Protocol):
    """Plan A's transport (jobs/queue.py): enqueue a generation id as a job whose id is that id."""

    async def hold_place(self) -> WorkerPlace | None:
        """A place in the worker this process embeds, when it runs and has one free: the generation
        may be recorded claimed by that worker, whose job the enqueue then takes for it."""
        ...

    async def enqueue(
        self,
        generation_id: str,
        recorded: Generation | None = None,
        *,
        place: Any = None,  # the place `hold_place` gave (the queue's own type)
        claimed: lifecycle.Claim | None = None,
    ) -> bool:
        """`recorded`: the generation as just recorded, for a worker of this process to take. `place`:
        one held for its job (`hold_place`), and `claimed`: the generation recorded claimed by it.
        True when the job was taken for the worker here and started there; False when it waits in
        the queue for a worker's look (the place given back)."""
        ...

    async def ping(self) -> bool: ...

    async def wake(self, generation_id: str) -> None:
        """Run a job that waits for a deferred retry now (a webhook brought its result)."""
        ...

    async def stop(self, generation_id: str) -> None:
        """Abort the job of a cancelled generation (running: interrupted; waiting: run at once, to end)."""
        ...

    async def depth(self) -> int:
        """Jobs in the queue, deferred ones included (for /metrics)."""
        ...

    async def in_flight(self) -> InFlight:
        """Plan A generations holding slots and waiting for one, over every worker (for /metrics)."""
        ...


class InlineRunner(Protocol):
    """Plan B (fallback/inline.py): run a generation in this process, one attempt."""

    owner: str  # the lease owner its runs claim as

    def reserve(self, user_id: int, model: str) -> lifecycle.SlotReservation | None:
        """Take this generation's slots now if they all have room (then it is recorded claimed)."""
        ...

    def start(
        self,
        generation_id: str,
        generation: Generation | None = None,
        reserved: lifecycle.Reserved | None = None,
    ) -> asyncio.Task[object]: ...

    def stop(self, generation_id: str) -> None: ...

    def in_flight(self) -> InFlight:
        """This process's Plan B generations holding slots and waiting for one (for /metrics)."""
        ...


PlanChangeListener = Callable[[str, str, str], Awaitable[None]]


@dataclass
class Submission:
    generation: Generation
    created: bool  # False: the request key was seen before; this is the earlier generation
    plan: Plan
    inline_task: asyncio.Task[object] | None = None  # Plan B's run, for callers that want to await it


class Dispatcher:
    def __init__(
        self,
        services: Services,
        inline: InlineRunner,
        queue: JobQueue | None,
        on_plan_change: PlanChangeListener | None = None,
    ) -> None:
        self.services = services
        self.settings = settings = services.settings
        self.db = services.db
        self.inline = inline
        self.queue = queue
        self.breaker = CircuitBreaker(cooldown=settings.breaker_cooldown)
        # The plan flags (`/plan`, `/ab`) as the last record on PostgreSQL found them stored: the next
        # chooses its plan by them, and its statement checks they still are (generation/recording.py).
        self._flags_seen: Flags = (None, None)
        self.on_plan_change = on_plan_change
        self.environment_mode = mode_from_environment(settings)

    # --- plan choice ---------------------------------------------------------------------------------

    async def mode(self) -> tuple[PlanMode, str]:
        """The mode in force and where it comes from: the persisted runtime flag wins over env."""
        stored = await stored_mode(self.db)
        if stored is not None:
            return stored, "/plan"
        return self.environment_mode, "env"

    async def set_mode(self, mode: PlanMode) -> None:
        await store_mode(self.db, mode)
        logger.info("plan mode set to {} at run time", mode.value)

    async def plan_b_share(self) -> tuple[int, str]:
        """The A/B share in force (% of new generations sent to Plan B in `auto`) and where it comes
        from: the persisted runtime flag wins over env."""
        stored = await stored_plan_b_share(self.db)
        if stored is not None:
            return stored, "/ab"
        return self.settings.plan_b_share, "env"

    async def set_plan_b_share(self, percent: int) -> None:
        await store_plan_b_share(self.db, percent)
        logger.info("Plan B share set to {}% at run time", percent)

    async def current_plan(self, queue_answers: bool | None = None) -> Plan:
        """The plan a new generation outside the A/B share would take now (without consuming a
        breaker probe). Given a fresh look at the queue (`queue_answers`), a queue that does not
        answer means Plan B even before an enqueue has tripped the breaker (in `a` too: each
        request falls back)."""
        mode, _ = await self.mode()
        if mode is PlanMode.b or self.queue is None or queue_answers is False:
            return Plan.B
        if mode is PlanMode.a:
            return Plan.A
        return Plan.A if self.breaker.state.value == "closed" else Plan.B

    async def counts_per_plan(self) -> dict[str, int]:
        async with self.db.sessions() as session:
            rows = await session.execute(select(Generation.plan, func.count()).group_by(Generation.plan))
            return {plan: int(count) for plan, count in rows}

    # --- submit --------------------------------------------------------------------------------------

    async def submit(
        self, valid: ValidRequest, request_key: str, bot_name: str, *, known_user: User | None = None
    ) -> Submission:
        """Record the generation and charge for it (raises ledger.InsufficientBalance, recording
        nothing), then hand it to a plan. A request key seen before answers the earlier generation.
        `known_user`: the user as the channel just read them (not read again)."""
        generation, created, reserved = await self._record(valid, request_key, bot_name, known_user)
        if created:
            metrics.charged(generation.kind, generation.price)
        if not created:
            return Submission(generation=generation, created=False, plan=Plan(generation.plan))
        plan = Plan(generation.plan)
        log = logger.bind(generation=generation.id, kind=generation.kind, user=valid.request.telegram_id)
        if plan is Plan.A:
            # Recorded claimed by the worker here (a place held for its job), or queued.
            claimed_by = generation.lease_owner
            started = await self._enqueue(generation, reserved)
            if started is not None:
                if claimed_by is not None and not started:  # its job waits for a look: anyone's claim
                    await lifecycle.release(self.db, generation.id, claimed_by)
                log.bind(plan="A").info("recorded and enqueued")
                return Submission(generation=generation, created=True, plan=Plan.A)
            if not await lifecycle.move_to_plan_b(self.db, generation.id, claimed_by=claimed_by):
                # The enqueue did reach Redis and a worker already claimed it: it stays on Plan A.
                log.bind(plan="A").info("enqueue looked failed but a worker has it; staying on Plan A")
                return Submission(generation=generation, created=True, plan=Plan.A)
            lifecycle.as_moved_to_plan_b(generation)
            reserved = None  # its runner here claims it
            log.bind(plan="B").warning("queue unavailable: running on Plan B instead")
        else:
            log.bind(plan="B").info("recorded; running inline")
        task = self.inline.start(generation.id, generation, reserved)
        return Submission(generation=generation, created=True, plan=Plan.B, inline_task=task)

    async def _record(
        self, valid: ValidRequest, request_key: str, bot_name: str, known_user: User | None
    ) -> tuple[Generation, bool, lifecycle.Reserved | None]:
        """Record and charge as one unit, choosing the plan by the mode and A/B share in force. A
        Plan B generation whose slots have room now is recorded already claimed by this process's
        runner (`Reserved`): its run then makes no write of its own before the provider's call."""
        spec = spec_of(valid.kind)
        if spec is None or spec.preparer is None:
            user = known_user if _is(known_user, bot_name, valid.request.telegram_id) else None
            if user is None:  # an HTTP request: its user is read (a first contact is created below)
                user = await self._known(bot_name, valid.request.telegram_id, valid.request.username)
            if user is not None:
                recorded = await self._record_in_one_statement(valid, request_key, bot_name, user)
                if recorded is not None:
                    return recorded
        return await self._record_in_a_transaction(valid, request_key, bot_name, known_user)

    async def _record_in_one_statement(
        self, valid: ValidRequest, request_key: str, bot_name: str, user: User
    ) -> tuple[Generation, bool, lifecycle.Reserved | None] | None:
        """A known user, a kind with no preparer: generation/recording.py's one statement (on SQLite
        its one trip to the connection's thread).
        The plan is chosen by the plan flags as the last record saw them; the statement writes
        nothing if they changed meanwhile, and tells the flags now stored: then once more by those.
        None when they kept changing (the transaction then reads them itself)."""
        for _ in range(3):
            seen_flags = self._flags_seen
            generation, reservation = await self._new_generation(
                valid, request_key, bot_name, user, plan_flags_from(*seen_flags)
            )
            try:
                async with self.db.direct_writes(urgent=True) as direct:
                    recorded = await record_and_charge(direct, generation, seen_flags)
            except BaseException as error:
                if reservation is not None:
                    reservation.give_back()
                return await self._recorded_meanwhile(error, request_key)
            self._flags_seen = recorded.flags
            if recorded.seen is None and recorded.balance is not None:
                reserved = None if reservation is None else lifecycle.Reserved(user, reservation)
                return generation, True, reserved
            if reservation is not None:
                reservation.give_back()
            if recorded.seen is not None:
                return await self._existing(recorded.seen, request_key), False, None
            if not recorded.stale:
                raise ledger.InsufficientBalance(needed=valid.price, balance=recorded.balance_before)
        return None

    async def _record_in_a_transaction(
        self, valid: ValidRequest, request_key: str, bot_name: str, known_user: User | None
    ) -> tuple[Generation, bool, lifecycle.Reserved | None]:
        """One transaction, which also reads the plan flags in force (no read of their own) and may
        create the user (a first contact) or run the kind's preparer."""
        reservation: lifecycle.SlotReservation | None = None
        request = valid.request
        try:
            async with self.db.transaction(urgent=True) as session:
                # Most requests are new: the key is looked up as a plain column (with the plan flags
                # in force, in the same statement), and only a repeat loads the generation it made.
                seen, mode_value, share_value = (
                    await (await statements(session)).execute(
                        select(
                            select(Generation.id)
                            .where(Generation.request_key == request_key)
                            .scalar_subquery(),
                            *plan_flag_columns(),
                        )
                    )
                ).one()
                if seen is not None:
                    existing = await session.get(Generation, seen)
                    assert existing is not None
                    return existing, False, None
                if _is(known_user, bot_name, request.telegram_id):
                    user = known_user
                else:
                    user, _ = await ensure_user(
                        session,
                        bot_name,
                        request.telegram_id,
                        username=request.username,
                        language=request.language,
                        new_user_bonus=self.settings.new_user_bonus,
                    )
                flags = plan_flags_from(mode_value, share_value)
                generation, reservation = await self._new_generation(
                    valid, request_key, bot_name, user, flags
                )
                spec = spec_of(valid.kind)
                if spec is not None and spec.preparer is not None:
                    # Raises InvalidRequest (e.g. no trained model yet): the transaction rolls back.
                    generation.request = {
                        **generation.request,
                        **await spec.preparer(session, user, generation.request),
                    }
                # The charge first, then the generation's row, in the order of the one statement
                # (generation/recording.py): the user's row locked, then the request key taken. In
                # the other order a concurrent duplicate recorded in one statement, holding the
                # user's row and waiting for this key, deadlocked with this transaction.
                if valid.price > 0:
                    await ledger.charge(
                        session, user.id, valid.price, ledger.charge_key(generation.id), generation.id
                    )
                # Inserted as a plain row (the object is what the caller gets): the ORM's flush
                # would only add its own bookkeeping to one INSERT.
                await (await statements(session)).execute(
                    insert(Generation).values(
                        {column.name: getattr(generation, column.name) for column in RECORDED_COLUMNS}
                    )
                )
                reserved = None if reservation is None else lifecycle.Reserved(user, reservation)
                return generation, True, reserved
        except BaseException as error:
            # Not recorded (a low balance, a refused preparation, a failed commit): nothing holds
            # the slots taken for it.
            if reservation is not None:
                reservation.give_back()
            return await self._recorded_meanwhile(error, request_key)

    async def _new_generation(
        self, valid: ValidRequest, request_key: str, bot_name: str, user: User, flags: StoredPlanFlags
    ) -> tuple[Generation, lifecycle.SlotReservation | None]:
        """The generation to record, on the plan the flags choose, recorded claimed when its runner
        holds room for it now: on Plan B the slots taken for it, on Plan A a place in the worker this
        process embeds (whose job the enqueue then takes for it)."""
        share = self.settings.plan_b_share if flags.plan_b_share is None else flags.plan_b_share
        # The id is chosen here, not by the row's default, because the A/B split hashes it.
        generation_id = uuid.uuid4().hex
        plan = plan_for(
            flags.mode or self.environment_mode,
            self.queue is not None,
            self.breaker,
            plan_b_share=share,
            generation_id=generation_id,
        )
        reservation: lifecycle.SlotReservation | None = None
        claimed_by: str | None = None
        if plan is Plan.B:
            reservation = self.inline.reserve(user.id, valid.model.id)
            claimed_by = None if reservation is None else self.inline.owner
        elif self.queue is not None:
            place = await self.queue.hold_place()
            if place is not None and place.owner is not None:
                reservation, claimed_by = place, place.owner
            elif place is not None:  # recorded queued: the enqueue still takes its job for the worker
                place.give_back()
        claimed = claimed_by is not None
        request = valid.request
        recorded_at = datetime.now(UTC)  # to the microsecond: the order of the lines for a slot
        generation = unattached(
            Generation,
            dict(
                id=generation_id,
                request_key=request_key,
                kind=valid.kind.value,
                user_id=user.id,
                bot_name=bot_name,
                chat_id=request.target_chat,
                model=valid.model.id,
                request=request.model_dump(mode="json"),
                plan=plan.value,
                status=GenerationStatus.running if claimed else GenerationStatus.queued,
                attempts=1 if claimed else 0,
                lease_owner=claimed_by,
                lease_expires_at=time.time() + self.settings.lease_seconds if claimed else None,
                failures=0,
                units=request.units(),
                unit_price=valid.model.price,
                price=valid.price,
                refunded=0,
                created_at=recorded_at,
                updated_at=recorded_at,
            ),
        )
        return generation, reservation

    async def _recorded_meanwhile(
        self, error: BaseException, request_key: str
    ) -> tuple[Generation, bool, lifecycle.Reserved | None]:
        """After a record that failed: a concurrent duplicate of the same request committed first (the
        unique key refused this one), then that one is the answer; any other error is raised."""
        if not isinstance(error, IntegrityError):
            raise error
        return await self._existing(None, request_key, error), False, None

    async def _existing(
        self, generation_id: str | None, request_key: str, error: BaseException | None = None
    ) -> Generation:
        async with self.db.sessions() as session:
            if generation_id is not None:
                existing = await session.get(Generation, generation_id)
            else:
                existing = await session.scalar(
                    select(Generation).where(Generation.request_key == request_key)
                )
        if existing is None:
            raise error or LookupError(f"no generation under {request_key!r}")
        return existing

    async def _known(self, bot_name: str, telegram_id: int, username: str | None) -> User | None:
        """The user an HTTP request names, when they exist and need no change (a new user, or a new
        username, is for the transaction)."""
        user = await read_user(self.db, bot_name, telegram_id)
        if user is None or (username and user.username != username):
            return None
        return user

    async def cancel(self, generation_id: str) -> Canceled | None:
        """Cancel and refund (generation/cancellation.py), then stop whichever plan runs it."""
        canceled = await cancel_generation(self.services, generation_id)
        if canceled is None:
            return None
        if canceled.generation.plan == Plan.B:
            self.inline.stop(generation_id)
        elif self.queue is not None:
            try:
                await asyncio.wait_for(self.queue.stop(generation_id), timeout=self.settings.redis_timeout)
            except Exception as error:  # the job finds the status final whenever it next runs
                logger.bind(generation=generation_id).warning("could not abort the job: {!r}", error)
        return canceled

    async def _enqueue(self, generation: Generation, reserved: lifecycle.Reserved | None) -> bool | None:
        """Whether its job started in the worker here (`JobQueue.enqueue`); None when the enqueue
        failed (the place held for it given back)."""
        assert self.queue is not None
        place: WorkerPlace | None = None
        claimed = None
        if reserved is not None:  # recorded claimed by the worker here
            place = cast(WorkerPlace, reserved.reservation)
            claimed = reserved.claim(generation)
        try:
            async with asyncio.timeout(self.settings.redis_timeout):  # no task of its own, as wait_for's
                started = await self.queue.enqueue(generation.id, generation, place=place, claimed=claimed)
        except Exception as error:  # connection refused, timeout, Redis errors: the queue is unhealthy
            logger.bind(generation=generation.id).warning("enqueue failed: {!r}", error)
            if self.breaker.record_failure():
                await self._announce("A", "B", f"queue unavailable: {type(error).__name__}")
            return None
        if self.breaker.record_success():
            await self._announce("B", "A", "queue healthy again")
        return started

    async def _announce(self, old: str, new: str, reason: str) -> None:
        logger.warning("plan switched {} -> {}: {}", old, new, reason)
        if self.on_plan_change is not None:
            try:
                await self.on_plan_change(old, new, reason)
            except Exception:
                logger.exception("could not report the plan switch to admins")


def _is(user: User | None, bot_name: str, telegram_id: int) -> TypeGuard[User]:
    """Whether a user the channel read is the one the request names (a user is never deleted)."""
    return user is not None and user.bot_name == bot_name and user.telegram_id == telegram_id
