"""Which plan new generations take: the persisted runtime mode (`/plan`) over the environment, and in
`auto` a circuit breaker around the queue (SPEC §5) and an A/B share (`/ab`) of new generations sent
to Plan B on purpose, so the two plans can be compared on live traffic."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from enum import StrEnum

from sqlalchemy import ScalarSelect, select
from sqlalchemy.ext.asyncio import AsyncSession

from generation.store import Database, Plan, RuntimeFlag, statements
from settings import Settings

PLAN_MODE_FLAG = "plan_mode"
PLAN_B_SHARE_FLAG = "plan_b_share"


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
    await _store_flag(db, PLAN_MODE_FLAG, mode.value)


# --- the A/B share ---------------------------------------------------------------------------------


def parse_share(value: str | None) -> int | None:
    """A stored (or typed) share: a whole percent from 0 to 100, else None."""
    text = (value or "").strip()
    if not text.isascii() or not text.isdigit() or len(text) > 3:
        return None
    percent = int(text)
    return percent if percent <= 100 else None


async def stored_plan_b_share(db: Database) -> int | None:
    async with db.sessions() as session:
        return (await read_plan_flags(session)).plan_b_share


async def store_plan_b_share(db: Database, percent: int) -> None:
    if not 0 <= percent <= 100:
        raise ValueError(f"a share is a percent from 0 to 100, not {percent}")
    await _store_flag(db, PLAN_B_SHARE_FLAG, str(percent))


@dataclass(frozen=True)
class StoredPlanFlags:
    """What `/plan` and `/ab` persisted; None where nothing was set (the environment decides)."""

    mode: PlanMode | None
    plan_b_share: int | None


def plan_flag_columns() -> list[ScalarSelect[str]]:
    """The stored mode and share as two columns, for a statement to read along with what it reads
    (the dispatcher's record transaction reads them with the request key's lookup: both decide the
    generation, and neither costs a round trip of its own); `plan_flags_from` reads them back."""
    return [
        select(RuntimeFlag.value).where(RuntimeFlag.key == flag).scalar_subquery()
        for flag in (PLAN_MODE_FLAG, PLAN_B_SHARE_FLAG)
    ]


def plan_flags_from(mode_value: str | None, share_value: str | None) -> StoredPlanFlags:
    try:
        mode = PlanMode(mode_value) if mode_value else None
    except ValueError:
        mode = None
    return StoredPlanFlags(mode=mode, plan_b_share=parse_share(share_value))


async def read_plan_flags(session: AsyncSession) -> StoredPlanFlags:
    """The mode and the share, in one read of the caller's session."""
    row = (await (await statements(session)).execute(select(*plan_flag_columns()))).one()
    return plan_flags_from(row[0], row[1])


def share_bucket(generation_id: str) -> int:
    """The generation's place (0-99) in the A/B split: from a hash of its id, so the same generation
    always lands on the same side, in every process, and ids spread evenly whatever their shape."""
    digest = hashlib.sha256(generation_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") % 100


def in_plan_b_share(generation_id: str, plan_b_share: int) -> bool:
    return share_bucket(generation_id) < plan_b_share


async def _store_flag(db: Database, key: str, value: str) -> None:
    async with db.transaction() as session:
        flag = await session.get(RuntimeFlag, key)
        if flag is None:
            session.add(RuntimeFlag(key=key, value=value))
        else:
            flag.value = value


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


def plan_for(
    mode: PlanMode,
    queue_available: bool,
    breaker: CircuitBreaker,
    *,
    plan_b_share: int = 0,
    generation_id: str = "",
) -> Plan:
    """The plan of a new generation. The share only ever moves generations from A to B: modes `a`
    and `b` ignore it, and what the queue's absence or the breaker sends to B stays on B."""
    if mode is PlanMode.b or not queue_available:
        return Plan.B
    if mode is PlanMode.a:
        return Plan.A
    if in_plan_b_share(generation_id, plan_b_share):
        return Plan.B  # decided before the breaker, so it takes no half-open probe from Plan A
    return Plan.A if breaker.allows_queue() else Plan.B
