"""Plan B: run a generation in this process, one attempt; failure refunds and tells the user.

Runs hold a lease that a heartbeat renews (generation/execution.py); a process that dies leaves
leases that expire, and a live process resumes those generations from their step journal
(`resume_interrupted`, at start and periodically).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

from loguru import logger

from generation import lifecycle, progress
from generation.drain import INTERRUPT_WITHIN, Drain, interrupt
from generation.execution import execute
from generation.lifecycle import Reserved
from generation.limits import Limits
from generation.log_context import about_generation
from generation.places import Place
from generation.services import Services
from generation.store import Generation, Plan, get_generation
from metrics import InFlight


class _Slots:
    """One limit's slots: how many are free, and who waits for one, first come first served."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.free = size
        self.waiting: deque[tuple[str, asyncio.Future[None]]] = deque()


class KeyedLimits:
    """In-process concurrency limits by key (a user, a provider, everything): Plan B's counterpart of
    jobs/limits.py. A generation over a limit waits its turn in a line of its own, still queued and
    unclaimed: a freed slot goes straight to the first in line (no polling), and `place` answers
    from memory where a waiting one stands."""

    def __init__(self) -> None:
        self._slots: dict[str, _Slots] = {}

    def is_full(self, key: str) -> bool:
        """Whether `hold(key, ...)` would wait now (every slot taken, or others already waiting)."""
        slots = self._slots.get(key)
        return slots is not None and (slots.free <= 0 or bool(slots.waiting))

    def waiting(self) -> int:
        """How many wait for a slot, over every key (one waits for one key at a time)."""
        return sum(len(slots.waiting) for slots in self._slots.values())

    def take_now(self, slots: list[tuple[str, int]]) -> bool:
        """A slot of each of these limits, taken at once if every one has room now (and nobody waits
        for it): all or none, never waiting. `give_back` returns them."""
        if any(self.is_full(key) for key, _ in slots):
            return False
        for key, limit in slots:
            self._slots.setdefault(key, _Slots(limit)).free -= 1
        return True

    def give_back(self, slots: list[tuple[str, int]]) -> None:
        for key, _ in slots:
            self._release(key, self._slots[key])

    def place(self, key: str, holder: str) -> int | None:
        """1 for the first in line for `key`; None when `holder` does not wait for it."""
        slots = self._slots.get(key)
        if slots is None:
            return None
        for place, (waiting, _) in enumerate(slots.waiting, start=1):
            if waiting == holder:
                return place
        return None

    @asynccontextmanager
    async def hold(self, key: str, limit: int, holder: str = "") -> AsyncIterator[None]:
        slots = self._slots.get(key)
        if slots is None:
            slots = self._slots[key] = _Slots(limit)
        if slots.free > 0 and not slots.waiting:
            slots.free -= 1
        else:
            entry = (holder, asyncio.get_running_loop().create_future())
            slots.waiting.append(entry)
            try:
                await entry[1]
            except asyncio.CancelledError:
                if entry[1].done() and not entry[1].cancelled():
                    self._release(key, slots)  # the slot was handed over just now: pass it on
                else:
                    with contextlib.suppress(ValueError):
                        slots.waiting.remove(entry)
                    self._forget_if_idle(key, slots)
                raise
        try:
            yield
        finally:
            self._release(key, slots)

    def _release(self, key: str, slots: _Slots) -> None:
        while slots.waiting:
            _, turn = slots.waiting.popleft()
            if not turn.done():
                turn.set_result(None)  # the slot passes straight to the first in line
                return
        slots.free += 1
        self._forget_if_idle(key, slots)

    def _forget_if_idle(self, key: str, slots: _Slots) -> None:
        if slots.free >= slots.size and not slots.waiting and self._slots.get(key) is slots:
            del self._slots[key]  # nobody holds or waits: forget the key (users come and go)


class Reservation:
    """Slots taken for a generation about to be recorded (`InlineRunner.reserve`): held by its run
    once it starts, given back once, by the run or by a recording that did not happen."""

    def __init__(self, limits: KeyedLimits, slots: list[tuple[str, int]]) -> None:
        self._limits = limits
        self._slots: list[tuple[str, int]] | None = slots

    def give_back(self) -> None:
        if self._slots is not None:
            self._limits.give_back(self._slots)
            self._slots = None


class InlineRunner:
    def __init__(self, services: Services) -> None:
        self.services = services
        self.owner = f"inline-{uuid.uuid4().hex[:12]}"
        self.tasks: dict[str, asyncio.Task[object]] = {}
        self.limits = KeyedLimits()

    def reserve(self, user_id: int, model: str) -> Reservation | None:
        """The slots a generation of this user on this model's provider would hold, taken now if
        they all have room: the generation is then recorded already claimed by this runner (one write
        transaction fewer before the provider's call). None when it would have to wait its turn."""
        provider = self.services.catalog.provider_of(model)
        slots = Limits.from_settings(self.services.settings).slots(user_id, provider)
        return Reservation(self.limits, slots) if self.limits.take_now(slots) else None

    def start(
        self, generation_id: str, generation: Generation | None = None, reserved: Reserved | None = None
    ) -> asyncio.Task[object]:
        """Run it in this process; `generation`: the row as just recorded, so the run need not read it;
        `reserved`: it was recorded claimed by this runner, with its slots taken."""
        running = self.tasks.get(generation_id)
        if running is not None and not running.done():
            if reserved is not None:
                reserved.reservation.give_back()
            return running
        task: asyncio.Task[object] = asyncio.create_task(
            self.run(generation_id, generation, reserved), name=f"plan-b-{generation_id}"
        )
        self.tasks[generation_id] = task
        task.add_done_callback(lambda _: self.tasks.pop(generation_id, None))
        if reserved is not None:
            # However the task ends, even cancelled before it began.
            task.add_done_callback(lambda _: reserved.reservation.give_back())
        return task

    def in_flight(self) -> InFlight:
        """Runs holding their slots (some of them waiting for a place among the process's runs
        working at once: Services.working), and those waiting in line for one (each is a task here)."""
        waiting = self.limits.waiting()
        running = sum(not task.done() for task in self.tasks.values())
        return InFlight(running=max(0, running - waiting), waiting=waiting)

    def stop(self, generation_id: str) -> None:
        """Interrupt a cancelled generation's run (its status is already final)."""
        task = self.tasks.get(generation_id)
        if task is not None:
            task.cancel()

    async def run(
        self, generation_id: str, generation: Generation | None = None, reserved: Reserved | None = None
    ) -> object:
        if generation is None:
            try:
                generation = await get_generation(self.services.db, generation_id)
            except Exception:
                logger.bind(generation=generation_id, plan="B").exception("Plan B run could not start")
                return None
            if generation is None:
                return None
        # Every line of the run (the libraries' too, and the tasks it starts) names the generation.
        with about_generation(generation):
            return await self._run(generation, reserved)

    async def _run(self, generation: Generation, reserved: Reserved | None) -> object:
        try:
            # Recorded claimed (its slots taken, nothing journaled yet), or claimed once its turn comes.
            claimed = None if reserved is None else reserved.claim(generation)
            await self.services.intake_first.wait_turn()
            turn = contextlib.nullcontext() if reserved is not None else self._turn(generation)
            async with turn:
                return await execute(
                    self.services,
                    generation.id,
                    Plan.B,
                    self.owner,
                    max_tries=1,
                    lease=self.services.settings.lease_seconds,
                    # Plan B waits inline for as long as the job may take (its deadline ends it sooner).
                    wait_budget=self.services.settings.training_deadline,
                    can_defer=False,
                    claimed=claimed,
                    # A place among the runs working at once in this process (Plan A's jobs too); a
                    # run waiting for its provider's job gives it up meanwhile.
                    working=Place(self.services.working),
                )
        except Exception:
            logger.exception("Plan B run crashed")
            return None

    @asynccontextmanager
    async def _turn(self, generation: Generation) -> AsyncIterator[None]:
        """Wait until this generation's user, provider and the process have room (the same limits as
        Plan A, counted in this process); while a limit is full the user is told so, with the place
        in line (generation/progress.py, as on Plan A)."""
        settings = self.services.settings
        generation_id = generation.id
        provider = self.services.catalog.provider_of(generation.model)
        limits = Limits.from_settings(settings).slots(generation.user_id, provider)
        async with contextlib.AsyncExitStack() as held:
            for key, limit in limits:
                waiting: contextlib.AbstractAsyncContextManager[None] = contextlib.nullcontext()
                if self.limits.is_full(key):
                    waiting = progress.told_while_waiting(
                        self.services, generation, key, place=partial(self.limits.place, key, generation_id)
                    )
                async with waiting:
                    await held.enter_async_context(self.limits.hold(key, limit, generation_id))
            yield

    async def resume_interrupted(self) -> list[str]:
        """Start the Plan B generations a dead process left unfinished (expired or no lease).

        One never claimed is left alone while it is fresh: with several fronts on one database it is
        most likely another live front's, just recorded and on its way to its run there (or waiting
        in that front's line); taking it would run it here instead, around that front's limits."""
        found = await lifecycle.orphans(
            self.services.db, Plan.B, unclaimed_older_than=self.services.settings.reconcile_grace
        )
        ids = [generation_id for generation_id, _ in found]
        for generation_id in ids:
            logger.bind(generation=generation_id, plan="B").info("resuming an interrupted generation")
            self.start(generation_id)
        return ids

    async def close(self, drain: Drain | float = 10.0) -> None:
        """Let running generations finish until the drain is over (a number: that many seconds), then
        interrupt the rest (generation/drain.py) and give their leases back, so that the next start,
        or another process's look for interrupted work, resumes them at once. Closing again does
        nothing more."""
        if not isinstance(drain, Drain):
            drain = Drain.lasting(drain)
        await drain.wait(self.tasks.values)
        interrupted: set[str] = set()

        def running() -> list[asyncio.Task[object]]:
            # Runs started meanwhile (a request already being handled when the drain began) too.
            interrupted.update(self.tasks)
            return list(self.tasks.values())

        if self.tasks:
            logger.info("Plan B: interrupting {} generation(s), to resume at next start", len(self.tasks))
        still = await interrupt(running)
        if still:
            logger.warning("Plan B: {} generation(s) did not end in time after being interrupted", len(still))
        for generation_id in sorted(interrupted):
            try:
                await asyncio.wait_for(
                    lifecycle.release(self.services.db, generation_id, self.owner), timeout=INTERRUPT_WITHIN
                )
            except Exception as error:  # its lease expires on its own
                logger.bind(generation=generation_id, plan="B").warning("lease not released: {!r}", error)
