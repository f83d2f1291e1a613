"""Figures for admins (/stats) and one user's account (/user): read-only queries, no aiogram here.

Portable between SQLite and PostgreSQL: every time bound is computed in Python (in UTC) and compared
against `created_at` (or `paid_at`, `refunded_at`); no database date arithmetic. "Today" is the UTC day
so far; "7 days" is today and the six UTC days before it. Each figure comes as a `Pair` (today, 7 days).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, case, func, literal_column, select
from sqlalchemy.ext.asyncio import AsyncSession

from generation import ledger, payments
from generation.store import Database, Generation, GenerationStatus, LedgerEntry, Order, OrderStatus, User
from generation.users import find_user

# Orders whose Stars we hold: paid, and paid with a refund under way (not returned yet).
KEPT_ORDER_STATUSES = (OrderStatus.paid, OrderStatus.refunding)
# How much of generations.error is grouped on; the reason is what comes before the first ':'.
REASON_PREFIX = 80
MAX_REASONS = 10


@dataclass(frozen=True)
class Bounds:
    now: datetime
    day_start: datetime  # 00:00 UTC today
    week_start: datetime  # 00:00 UTC six days before today: 7 days with today

    @classmethod
    def at(cls, now: datetime | None = None) -> Bounds:
        moment = (now or datetime.now(UTC)).astimezone(UTC)
        day_start = moment.replace(hour=0, minute=0, second=0, microsecond=0)
        return cls(now=moment, day_start=day_start, week_start=day_start - timedelta(days=6))


@dataclass
class Pair:
    today: int = 0
    week: int = 0

    def add(self, today: int, week: int) -> None:
        self.today += today
        self.week += week


@dataclass
class Payments:
    count: Pair = field(default_factory=Pair)
    amount: Pair = field(default_factory=Pair)  # Telegram Stars paid (XTR)
    stars: Pair = field(default_factory=Pair)  # stars credited (paid) or debited (refunded)


@dataclass
class BotStats:
    """Figures of one bot, or of every bot when `bot_name` is None."""

    bot_name: str | None
    bounds: Bounds
    users_total: int = 0
    new_users: Pair = field(default_factory=Pair)
    generations: Pair = field(default_factory=Pair)
    by_kind: dict[str, Pair] = field(default_factory=dict)
    by_plan: dict[str, Pair] = field(default_factory=dict)
    by_status: dict[str, Pair] = field(default_factory=dict)
    charged: Pair = field(default_factory=Pair)  # charges, gross
    refunded: Pair = field(default_factory=Pair)  # refunds of generations
    paid: Payments = field(default_factory=Payments)  # orders paid (and not refunded)
    refunded_payments: Payments = field(default_factory=Payments)  # orders refunded
    failures: list[tuple[str, Pair]] = field(default_factory=list)  # by reason, most frequent first

    @property
    def charged_net(self) -> Pair:
        return Pair(self.charged.today - self.refunded.today, self.charged.week - self.refunded.week)


async def collect(db: Database, bot_name: str | None, now: datetime | None = None) -> BotStats:
    """The figures of one bot (or of all bots: `bot_name=None`) for today and the last 7 days."""
    stats = BotStats(bot_name=bot_name, bounds=Bounds.at(now))
    async with db.sessions() as session:
        await _users(session, stats)
        await _generations(session, stats)
        await _ledger(session, stats)
        await _orders(session, stats)
        await _failures(session, stats)
    return stats


def _today_count(column: Any, bounds: Bounds) -> ColumnElement[Any]:
    return func.coalesce(func.sum(case((column >= bounds.day_start, 1), else_=0)), 0)


def _today_sum(column: Any, value: Any, bounds: Bounds) -> ColumnElement[Any]:
    return func.coalesce(func.sum(case((column >= bounds.day_start, value), else_=0)), 0)


async def _users(session: AsyncSession, stats: BotStats) -> None:
    bounds = stats.bounds
    week = func.coalesce(func.sum(case((User.created_at >= bounds.week_start, 1), else_=0)), 0)
    query = select(func.count(User.id), week, _today_count(User.created_at, bounds))
    if stats.bot_name is not None:
        query = query.where(User.bot_name == stats.bot_name)
    total, new_week, new_today = (await session.execute(query)).one()
    stats.users_total = int(total or 0)
    stats.new_users = Pair(int(new_today), int(new_week))


async def _generations(session: AsyncSession, stats: BotStats) -> None:
    bounds = stats.bounds
    query = (
        select(
            Generation.kind,
            Generation.plan,
            Generation.status,
            func.count(),
            _today_count(Generation.created_at, bounds),
        )
        .where(Generation.created_at >= bounds.week_start)
        .group_by(Generation.kind, Generation.plan, Generation.status)
    )
    if stats.bot_name is not None:
        query = query.where(Generation.bot_name == stats.bot_name)
    by_kind: dict[str, Pair] = defaultdict(Pair)
    by_plan: dict[str, Pair] = defaultdict(Pair)
    by_status: dict[str, Pair] = defaultdict(Pair)
    for kind, plan, status, week, today in await session.execute(query):
        today, week = int(today), int(week)
        stats.generations.add(today, week)
        by_kind[str(kind)].add(today, week)
        by_plan[str(plan)].add(today, week)
        by_status[str(status)].add(today, week)
    stats.by_kind = dict(sorted(by_kind.items()))
    stats.by_plan = dict(sorted(by_plan.items()))
    status_order = list(GenerationStatus)
    stats.by_status = dict(sorted(by_status.items(), key=lambda item: _position(status_order, item[0])))


def _position(order: list[GenerationStatus], value: str) -> tuple[int, str]:
    try:
        return order.index(GenerationStatus(value)), value
    except ValueError:
        return len(order), value


async def _ledger(session: AsyncSession, stats: BotStats) -> None:
    bounds = stats.bounds
    is_charge = LedgerEntry.operation_key.startswith("charge:", autoescape=True)
    is_refund = LedgerEntry.operation_key.startswith("refund:", autoescape=True)
    today = LedgerEntry.created_at >= bounds.day_start

    def total(condition: ColumnElement[bool], sign: int) -> ColumnElement[Any]:
        return func.coalesce(func.sum(case((condition, sign * LedgerEntry.amount), else_=0)), 0)

    query = select(
        total(is_charge, -1),
        total(is_charge & today, -1),
        total(is_refund, 1),
        total(is_refund & today, 1),
    ).where(LedgerEntry.created_at >= bounds.week_start, is_charge | is_refund)
    if stats.bot_name is not None:
        query = query.join(User, User.id == LedgerEntry.user_id).where(User.bot_name == stats.bot_name)
    charged_week, charged_today, refunded_week, refunded_today = (await session.execute(query)).one()
    stats.charged = Pair(int(charged_today), int(charged_week))
    stats.refunded = Pair(int(refunded_today), int(refunded_week))


async def _orders(session: AsyncSession, stats: BotStats) -> None:
    paid_at = func.coalesce(Order.paid_at, Order.created_at)
    refunded_at = func.coalesce(Order.refunded_at, Order.paid_at, Order.created_at)
    await _payments(session, stats, stats.paid, Order.status.in_(KEPT_ORDER_STATUSES), paid_at, Order.stars)
    await _payments(
        session,
        stats,
        stats.refunded_payments,
        Order.status == OrderStatus.refunded,
        refunded_at,
        Order.refunded_stars,
    )


async def _payments(
    session: AsyncSession,
    stats: BotStats,
    into: Payments,
    condition: ColumnElement[bool],
    moment: ColumnElement[Any],
    stars: Any,
) -> None:
    bounds = stats.bounds
    query = select(
        func.count(Order.id),
        _today_count(moment, bounds),
        func.coalesce(func.sum(Order.amount), 0),
        _today_sum(moment, Order.amount, bounds),
        func.coalesce(func.sum(stars), 0),
        _today_sum(moment, stars, bounds),
    ).where(condition, moment >= bounds.week_start)
    if stats.bot_name is not None:
        query = query.where(Order.bot_name == stats.bot_name)
    count, count_today, amount, amount_today, credited, credited_today = (await session.execute(query)).one()
    into.count = Pair(int(count_today), int(count))
    into.amount = Pair(int(amount_today), int(amount))
    into.stars = Pair(int(credited_today), int(credited))


async def _failures(session: AsyncSession, stats: BotStats) -> None:
    bounds = stats.bounds
    # Constants as literals, not bound parameters: PostgreSQL matches the GROUP BY expression by its text.
    prefix = func.substr(Generation.error, literal_column("1"), literal_column(str(REASON_PREFIX)))
    query = (
        select(prefix, func.count(), _today_count(Generation.created_at, bounds))
        .where(Generation.status == GenerationStatus.failed, Generation.created_at >= bounds.week_start)
        .group_by(prefix)
    )
    if stats.bot_name is not None:
        query = query.where(Generation.bot_name == stats.bot_name)
    reasons: dict[str, Pair] = defaultdict(Pair)
    for error, week, today in await session.execute(query):
        reasons[failure_reason(error)].add(int(today), int(week))
    ranked = sorted(reasons.items(), key=lambda item: (-item[1].week, -item[1].today, item[0]))
    if len(ranked) > MAX_REASONS:
        rest = Pair()
        for _, pair in ranked[MAX_REASONS - 1 :]:
            rest.add(pair.today, pair.week)
        ranked = [*ranked[: MAX_REASONS - 1], ("…", rest)]
    stats.failures = ranked


def failure_reason(error: str | None) -> str:
    """The reason a generation failed: its error's class, what comes before the first ':'
    ("PredictionFailed: CUDA out of memory" → "PredictionFailed")."""
    reason = (error or "").split(":", 1)[0].strip()
    return reason[:REASON_PREFIX] or "?"


# --- one user's account ----------------------------------------------------------------------------


@dataclass
class UserAccount:
    user: User
    orders: list[Order]
    generations: list[Generation]
    ledger: list[LedgerEntry]


async def user_account(
    db: Database,
    bot_name: str,
    telegram_id: int,
    *,
    orders: int = 5,
    generations: int = 8,
    ledger_lines: int = 8,
) -> UserAccount | None:
    """The user of this bot with their latest orders, generations and ledger lines (newest first)."""
    async with db.sessions() as session:
        user = await find_user(session, bot_name, telegram_id)
        if user is None:
            return None
        latest_orders = await payments.recent_orders(session, user.id, orders)
        recent_generations = await session.scalars(
            select(Generation)
            .where(Generation.user_id == user.id)
            .order_by(Generation.created_at.desc(), Generation.id.desc())
            .limit(generations)
        )
        return UserAccount(
            user=user,
            orders=latest_orders,
            generations=list(recent_generations),
            ledger=await ledger.recent_entries(session, user.id, ledger_lines),
        )
