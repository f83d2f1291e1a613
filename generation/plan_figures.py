"""Figures that compare Plan A with Plan B (`/ab`, `/plan`, the dashboard): per plan (and, asked for,
per kind) how many generations a window recorded, how they ended, how long the done ones took end to
end and why the failed ones failed.

Portable between SQLite and PostgreSQL: counts are plain GROUP BYs, and the percentiles are computed
here in Python from the done generations' durations (no `percentile_cont`, which SQLite lacks). The
window is bounded (`since`, by default the last 24 h) and so are the durations fetched (the newest
`MAX_DURATIONS` done generations), so a busy history costs a bounded read.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, literal_column, select
from sqlalchemy.ext.asyncio import AsyncSession

from generation.stats import REASON_PREFIX, failure_reason
from generation.store import Database, Generation, GenerationStatus, Plan, as_utc

DEFAULT_WINDOW = timedelta(hours=24)
# The newest done generations whose durations feed the percentiles: enough for a stable p95, few
# enough to read in one go on every /plan.
MAX_DURATIONS = 20_000
ACTIVE_STATUSES = frozenset({GenerationStatus.queued, GenerationStatus.running})


@dataclass(frozen=True)
class Figures:
    plan: str  # "A" or "B"
    kind: str | None  # None: every kind of the plan together
    count: int  # generations recorded in the window
    done: int
    failed: int
    canceled: int
    active: int  # queued or running
    success_rate: float | None  # done / (done + failed); None when none ended
    p50_seconds: float | None  # end to end (created_at -> finished_at) of the done ones
    p95_seconds: float | None
    failures: dict[str, int]  # failed ones by reason (generation.stats.failure_reason)


@dataclass
class _Tally:
    """Figures being gathered for one (plan, kind) group."""

    by_status: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    durations: list[float] = field(default_factory=list)
    failures: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def figures(self, plan: str, kind: str | None) -> Figures:
        done = self.by_status[GenerationStatus.done]
        failed = self.by_status[GenerationStatus.failed]
        ended = done + failed
        ranked = sorted(self.failures.items(), key=lambda item: (-item[1], item[0]))
        return Figures(
            plan=plan,
            kind=kind,
            count=sum(self.by_status.values()),
            done=done,
            failed=failed,
            canceled=self.by_status[GenerationStatus.canceled],
            active=sum(self.by_status[status] for status in ACTIVE_STATUSES),
            success_rate=done / ended if ended else None,
            p50_seconds=percentile(self.durations, 50),
            p95_seconds=percentile(self.durations, 95),
            failures=dict(ranked),
        )


async def plan_figures(
    db: Database, *, since: datetime | None = None, by_kind: bool = False
) -> list[Figures]:
    """The figures of the generations recorded since `since` (default: the last 24 h), one per plan
    (both plans always, zeros included), or with `by_kind` one per (plan, kind) that has generations.
    Ordered by plan, then kind."""
    start = as_utc(since) if since is not None else datetime.now(UTC) - DEFAULT_WINDOW
    tallies: dict[tuple[str, str | None], _Tally] = defaultdict(_Tally)
    if not by_kind:
        for each_plan in Plan:
            tallies[(each_plan.value, None)] = _Tally()

    def tally(plan: str, kind: str) -> _Tally:
        return tallies[(str(plan), str(kind) if by_kind else None)]

    async with db.sessions() as session:
        for plan, kind, status, count in await _counts(session, start):
            tally(plan, kind).by_status[str(status)] += int(count)
        for plan, kind, created_at, finished_at in await _done_times(session, start):
            if finished_at is None:  # excluded by the query; the column type does not know it
                continue
            seconds = (as_utc(finished_at) - as_utc(created_at)).total_seconds()
            tally(plan, kind).durations.append(max(0.0, seconds))
        for plan, kind, error, count in await _failure_rows(session, start):
            tally(plan, kind).failures[failure_reason(error)] += int(count)
    return [tallies[key].figures(*key) for key in sorted(tallies, key=lambda key: (key[0], key[1] or ""))]


async def _counts(session: AsyncSession, start: datetime) -> Sequence[tuple[str, str, str, int]]:
    query = (
        select(Generation.plan, Generation.kind, Generation.status, func.count())
        .where(Generation.created_at >= start)
        .group_by(Generation.plan, Generation.kind, Generation.status)
    )
    return (await session.execute(query)).all()


async def _done_times(
    session: AsyncSession, start: datetime
) -> Sequence[tuple[str, str, datetime, datetime | None]]:
    query = (
        select(Generation.plan, Generation.kind, Generation.created_at, Generation.finished_at)
        .where(
            Generation.created_at >= start,
            Generation.status == GenerationStatus.done,
            Generation.finished_at.is_not(None),
        )
        .order_by(Generation.created_at.desc())
        .limit(MAX_DURATIONS)
    )
    return (await session.execute(query)).all()


async def _failure_rows(session: AsyncSession, start: datetime) -> Sequence[tuple[str, str, str | None, int]]:
    # Grouped on the error's first characters (as /stats does): the reason is their part before ':'.
    # Constants as literals, not bound parameters: PostgreSQL matches the GROUP BY expression by its text.
    prefix = func.substr(Generation.error, literal_column("1"), literal_column(str(REASON_PREFIX)))
    query = (
        select(Generation.plan, Generation.kind, prefix, func.count())
        .where(Generation.created_at >= start, Generation.status == GenerationStatus.failed)
        .group_by(Generation.plan, Generation.kind, prefix)
    )
    return (await session.execute(query)).all()


def percentile(values: Sequence[float], percent: float) -> float | None:
    """The `percent`-th percentile by linear interpolation between the closest ranks (numpy's default);
    None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * percent / 100
    lower = math.floor(position)
    upper = min(lower + 1, len(ordered) - 1)
    return ordered[lower] + (ordered[upper] - ordered[lower]) * (position - lower)
