"""Which plan new generations take: the persisted runtime mode (`/plan`) over the environment, and in
`auto` a circuit breaker around the queue (SPEC §5)."""

from __future__ import annotations

import time
from enum import StrEnum

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from generation.store import Database, Plan, RuntimeFlag
from settings import Settings

PLAN_MODE_FLAG = "plan_mode"


class PlanMode(StrEnum):
    auto = "auto"
    a = "a"
    b = "b"


def mode_from_environment(settings: Settings) -> PlanMode:
    if settings.fallback_mode or not settings.use_queue:
        return PlanMode.b
    return PlanMode.auto


async def stored_mode(db: Database) -> PlanMode | None:
    async with db.sessions() as session:
        return await read_stored_mode(session)


async def read_stored_mode(session: AsyncSession) -> PlanMode | None:
    """The mode `/plan` persisted, read in the caller's session (the dispatcher's record transaction)."""
    value = await session.scalar(select(RuntimeFlag.value).where(RuntimeFlag.key == PLAN_MODE_FLAG))
    try:
        return PlanMode(value) if value else None
    except ValueError:
        return None


async def store_mode(db: Database, mode: PlanMode) -> None:
    async with db.transaction() as session:
        flag = await session.get(RuntimeFlag, PLAN_MODE_FLAG)
        if flag is None:
            session.add(RuntimeFlag(key=PLAN_MODE_FLAG, value=mode.value))
        else:
            flag.value = mode.value


class BreakerState(StrEnum):
    closed = "closed"  # the queue is healthy: Plan A
    open = "open"  # the queue failed: Plan B until the cooldown ends
    half_open = "half-open"  # one probe request may try the queue


class CircuitBreaker:
    """Trips on one queue failure (an enqueue that errs or times out is a request at risk); after the
    cooldown lets one probe through, which closes it on success or opens it again on failure."""

    def __init__(self, cooldown: float) -> None:
        self.cooldown = cooldown
        self.state = BreakerState.closed
        self.opened_at = 0.0
        self.failures = 0

    def allows_queue(self) -> bool:
        if self.state is BreakerState.closed:
            return True
        if self.state is BreakerState.open and time.monotonic() - self.opened_at >= self.cooldown:
            self.state = BreakerState.half_open
            return True  # this caller is the probe
        return False

    def record_success(self) -> bool:
        """Answers True when this closed a breaker that was not closed."""
        changed = self.state is not BreakerState.closed
        self.state = BreakerState.closed
        self.failures = 0
        return changed

    def record_failure(self) -> bool:
        """Answers True when this opened a breaker that was closed."""
        self.failures += 1
        was_closed = self.state is BreakerState.closed
        self.state = BreakerState.open
        self.opened_at = time.monotonic()
        return was_closed

    def describe(self) -> str:
        if self.state is BreakerState.open:
            remaining = max(0.0, self.cooldown - (time.monotonic() - self.opened_at))
            return f"{self.state.value}, probe in {remaining:.0f}s, {self.failures} failure(s)"
        return f"{self.state.value}, {self.failures} failure(s)"


def plan_for(mode: PlanMode, queue_available: bool, breaker: CircuitBreaker) -> Plan:
    if mode is PlanMode.b or not queue_available:
        return Plan.B
    if mode is PlanMode.a:
        return Plan.A
    return Plan.A if breaker.allows_queue() else Plan.B
