"""The dashboard's own read-only queries: the latest generations and orders over every user, and how
each provider fared lately. Portable between SQLite and PostgreSQL: time bounds are computed here, in
UTC, and the grouping by provider happens in Python (the catalogue, not the database, knows it)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import func, literal_column, select

from generation.catalog import Catalog
from generation.stats import REASON_PREFIX, failure_reason
from generation.store import Database, Generation, GenerationStatus, Order, as_utc

UNKNOWN_PROVIDER = "unknown"


async def recent_generations(db: Database, limit: int) -> list[Generation]:
    async with db.sessions() as session:
        found = await session.scalars(
            select(Generation).order_by(Generation.created_at.desc(), Generation.id.desc()).limit(limit)
        )
        return list(found)


async def recent_orders(db: Database, limit: int) -> list[Order]:
    """Every bot's latest top-ups (paid, pending, refunded), newest first."""
    async with db.sessions() as session:
        found = await session.scalars(
            select(Order).order_by(Order.created_at.desc(), Order.id.desc()).limit(limit)
        )
        return list(found)


@dataclass
class ProviderHealth:
    provider: str
    ended: int = 0  # generations that reached a final status since the bound
    done: int = 0
    failed: int = 0
    canceled: int = 0
    failed_tries: int = 0  # tries that failed, retried ones included
    failures: Counter[str] = field(default_factory=Counter)  # failed generations by reason
    last_success: datetime | None = None  # ever, not only since the bound


async def provider_health(db: Database, catalog: Catalog, since: datetime) -> list[ProviderHealth]:
    """Per provider: what ended since `since`, why what failed did, and when it last delivered."""
    # Constants as literals, not bound parameters: PostgreSQL matches the GROUP BY expression by its text.
    reason = func.substr(Generation.error, literal_column("1"), literal_column(str(REASON_PREFIX)))
    ended = (
        select(
            Generation.model,
            Generation.status,
            reason,
            func.count(),
            func.coalesce(func.sum(Generation.failures), 0),
        )
        .where(Generation.finished_at >= since)
        .group_by(Generation.model, Generation.status, reason)
    )
    last_success = (
        select(Generation.model, func.max(Generation.finished_at))
        .where(Generation.status == GenerationStatus.done)
        .group_by(Generation.model)
    )
    health: dict[str, ProviderHealth] = {}

    def of(model: str) -> ProviderHealth:
        entry = catalog.models.get(model)
        provider = entry.provider if entry is not None else UNKNOWN_PROVIDER
        return health.setdefault(provider, ProviderHealth(provider))

    async with db.sessions() as session:
        for model, status, error, count, failed_tries in await session.execute(ended):
            row = of(str(model))
            row.ended += int(count)
            row.failed_tries += int(failed_tries)
            if status == GenerationStatus.done:
                row.done += int(count)
            elif status == GenerationStatus.failed:
                row.failed += int(count)
                row.failures[failure_reason(error)] += int(count)
            elif status == GenerationStatus.canceled:
                row.canceled += int(count)
        for model, finished_at in await session.execute(last_success):
            if finished_at is None:
                continue
            row = of(str(model))
            moment = as_utc(finished_at)
            if row.last_success is None or moment > row.last_success:
                row.last_success = moment
    # Every provider the catalogue sells through is listed, a silent one too (that is news as well).
    for entry in catalog.models.values():
        health.setdefault(entry.provider, ProviderHealth(entry.provider))
    return sorted(health.values(), key=lambda row: row.provider)
