"""Top-ups with Telegram Stars (SPEC §4.7): an order is written before its invoice, checked before its
pre-checkout is approved, credited once per Telegram charge id, and refunded once.

No Telegram here: the payments router asks, these functions decide and write. Every money movement goes
through the ledger with a unique key: `payment:<charge id>` credits, `payment_refund:<charge id>` debits.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

import metrics
from generation import ledger
from generation.catalog import TopUpPackage
from generation.ledger import InsufficientBalance
from generation.store import Database, LedgerEntry, Order, OrderStatus, RuntimeFlag, User

CURRENCY = "XTR"  # Telegram Stars; invoices in Stars carry an empty provider token


def payment_key(charge_id: str) -> str:
    return f"payment:{charge_id}"


def payment_refund_key(charge_id: str) -> str:
    return f"payment_refund:{charge_id}"


class PreCheckoutProblem(StrEnum):
    """Why a pre-checkout is refused; each has a text (`precheckout_<value>`) in the user's language."""

    unknown_order = "unknown_order"  # no such order, or not this user's or this bot's
    wrong_amount = "wrong_amount"  # another currency or amount than the order's
    not_pending = "not_pending"  # already paid, or refunded


async def create_order(db: Database, user: User, package: TopUpPackage) -> Order:
    """A pending order for a package; its id (128 random bits) is the invoice's payload."""
    order = Order(
        id=secrets.token_hex(16),
        user_id=user.id,
        bot_name=user.bot_name,
        telegram_id=user.telegram_id,
        package=package.id,
        stars=package.stars,
        amount=package.price,
        status=OrderStatus.pending,
    )
    async with db.transaction() as session:
        session.add(order)
    return order


async def check_pre_checkout(
    db: Database, *, order_id: str, bot_name: str, telegram_id: int, currency: str, amount: int
) -> PreCheckoutProblem | None:
    """Whether Telegram may take this payment: the order exists, is this user's at this bot, asks this
    amount in Stars, and is still pending. None approves."""
    async with db.sessions() as session:
        order = await _find_order(session, order_id)
    if order is None or order.bot_name != bot_name or order.telegram_id != telegram_id:
        return PreCheckoutProblem.unknown_order
    if currency != CURRENCY or amount != order.amount:
        return PreCheckoutProblem.wrong_amount
    if order.status != OrderStatus.pending:
        return PreCheckoutProblem.not_pending
    return None


@dataclass(frozen=True)
class PaymentRecorded:
    order: Order | None  # None: the payload names no order of this user (logged; support refunds it)
    credited: bool  # False when this charge was already credited (a redelivered update)
    balance: int


async def record_payment(
    db: Database,
    *,
    bot_name: str,
    telegram_id: int,
    order_id: str,
    charge_id: str,
    amount: int,
    currency: str = CURRENCY,
) -> PaymentRecorded:
    """Credit a successful payment exactly once, keyed by Telegram's charge id, whoever calls it and
    however often (the update delivered twice, two processes at once, the reconciler after a crash).

    The order moves pending -> paid in the same transaction as the credit. Should Telegram take two
    payments for one order (two pre-checkouts approved before either was paid), the second is kept as an
    order of its own: the user paid twice and is credited twice. A payment of another amount or currency
    than its order's credits nothing (Telegram only charges what the pre-checkout approved, so it is not
    this order's payment); it is kept with 0 stars so that an admin can /refund it by its charge id."""
    for _ in range(3):
        try:
            recorded = await _record_payment_once(
                db, bot_name, telegram_id, order_id, charge_id, amount, currency
            )
        except IntegrityError:
            # Another process recorded this charge between our read and our write: read it again.
            continue
        if recorded.credited and recorded.order is not None:  # committed, once per charge id
            metrics.STARS_BOUGHT.inc(recorded.order.stars)
        return recorded
    raise RuntimeError(f"could not record payment {charge_id}")  # pragma: no cover


async def _record_payment_once(
    db: Database, bot_name: str, telegram_id: int, order_id: str, charge_id: str, amount: int, currency: str
) -> PaymentRecorded:
    async with db.transaction() as session:
        already = await session.scalar(select(Order).where(Order.charge_id == charge_id))
        if already is not None:
            balance = await ledger.balance_of(session, already.user_id)
            return PaymentRecorded(already if already.stars else None, False, balance)
        order = await _find_order(session, order_id)
        if order is None or order.bot_name != bot_name or order.telegram_id != telegram_id:
            return PaymentRecorded(None, False, 0)
        if currency != CURRENCY or amount != order.amount:
            await _keep_payment(session, order, charge_id, amount, stars=0)
            return PaymentRecorded(None, False, await ledger.balance_of(session, order.user_id))
        paid = await session.execute(
            update(Order)
            .where(Order.id == order.id, Order.status == OrderStatus.pending)
            .values(status=OrderStatus.paid, charge_id=charge_id, paid_at=func.now())
        )
        if not paid.rowcount:  # type: ignore[attr-defined]
            order = await _keep_payment(session, order, charge_id, amount, stars=order.stars)
        await session.refresh(order)
        posting = await ledger.credit(
            session, order.user_id, order.stars, payment_key(charge_id), note=f"top-up {order.package}"
        )
        return PaymentRecorded(order, posting.applied, posting.balance)


async def _keep_payment(
    session: AsyncSession, order: Order, charge_id: str, amount: int, *, stars: int
) -> Order:
    """A payment that is not the order's own first one, kept as a paid order of its own."""
    extra = Order(
        id=secrets.token_hex(16),
        user_id=order.user_id,
        bot_name=order.bot_name,
        telegram_id=order.telegram_id,
        package=order.package,
        stars=stars,
        amount=amount,
        status=OrderStatus.paid,
        charge_id=charge_id,
        paid_at=func.now(),
    )
    session.add(extra)
    await session.flush()
    return extra


# An order's id is secrets.token_hex(16); an invoice payload of any other shape names no order (and a
# NUL byte in it could not even be looked up on PostgreSQL).
ORDER_ID_SHAPE = re.compile(r"[0-9a-f]{32}")


async def _find_order(session: AsyncSession, order_id: str) -> Order | None:
    if not ORDER_ID_SHAPE.fullmatch(order_id):
        return None
    return await session.get(Order, order_id)


async def mark_notified(db: Database, order_id: str) -> None:
    async with db.transaction() as session:
        await session.execute(update(Order).where(Order.id == order_id).values(notified=True))


class RefundRefused(Exception):
    """A refund that cannot go ahead; `reason` names a text (`refund_<reason>`)."""

    def __init__(self, reason: str, **details: object) -> None:
        super().__init__(reason)
        self.reason = reason
        self.details = details


async def begin_refund(db: Database, charge_id: str, *, force: bool) -> Order:
    """Check a refund and mark the order `refunding` before Telegram is asked, so that two admins (or a
    retried command) cannot both start one. A refund that was started but not finished (a crash after
    Telegram refunded) may be begun again: Telegram then answers that it was already refunded, and the
    debit follows once."""
    async with db.transaction() as session:
        order = await session.scalar(select(Order).where(Order.charge_id == charge_id))
        if order is None:
            raise RefundRefused("unknown_charge")
        if order.status == OrderStatus.refunded:
            raise RefundRefused("already_refunded")
        balance = await ledger.balance_of(session, order.user_id)
        if balance < order.stars and not force:
            raise RefundRefused("spent", balance=balance, stars=order.stars)
        await session.execute(update(Order).where(Order.id == order.id).values(status=OrderStatus.refunding))
        await session.refresh(order)
        return order


async def cancel_refund(db: Database, order_id: str) -> None:
    """Telegram refused the refund: the order is paid again (and may be refunded later)."""
    async with db.transaction() as session:
        await session.execute(
            update(Order)
            .where(Order.id == order_id, Order.status == OrderStatus.refunding)
            .values(status=OrderStatus.paid)
        )


@dataclass(frozen=True)
class RefundRecorded:
    debited: int  # stars taken from the balance (less than the order's when forced after spending)
    applied: bool  # False when this refund was already debited
    balance: int


async def finish_refund(db: Database, order_id: str, *, note: str | None = None) -> RefundRecorded:
    """Telegram returned the Stars: debit the stars once (`payment_refund:<charge id>`), as many as the
    balance still holds when the refund was forced, and mark the order refunded. `note` says who did
    it (the admin), on the ledger line."""
    async with db.transaction() as session:
        # The order's row lock puts a second finisher (another admin, a retry) behind the first, so it
        # sees the first one's debit instead of debiting what is left.
        order = await session.get(Order, order_id, with_for_update=True)
        assert order is not None and order.charge_id is not None
        key = payment_refund_key(order.charge_id)
        earlier = await session.scalar(select(LedgerEntry.amount).where(LedgerEntry.operation_key == key))
        if earlier is not None:  # a second admin, or a retry: the debit was made
            debit, applied = -int(earlier), False
            balance = await ledger.balance_of(session, order.user_id)
        else:
            debit, balance = await _debit_what_is_left(session, order.user_id, order.stars, key, note)
            applied = debit > 0
        await session.execute(
            update(Order)
            .where(Order.id == order.id)
            .values(status=OrderStatus.refunded, refunded_stars=debit, refunded_at=func.now())
        )
        return RefundRecorded(debited=debit, applied=applied, balance=balance)


async def _debit_what_is_left(
    session: AsyncSession, user_id: int, stars: int, key: str, note: str | None
) -> tuple[int, int]:
    """Take `stars`, or what the balance still holds if less (a forced refund); never below zero."""
    while True:
        balance = await ledger.balance_of(session, user_id)
        debit = min(stars, balance)
        if debit <= 0:
            return 0, balance
        try:
            posting = await ledger.charge(session, user_id, debit, key, note=note)
        except InsufficientBalance:  # spent meanwhile by another transaction: take what is left now
            continue
        return debit, posting.balance


async def recent_orders(session: AsyncSession, user_id: int, limit: int = 10) -> list[Order]:
    """A user's latest orders, newest first."""
    rows = await session.scalars(
        select(Order)
        .where(Order.user_id == user_id)
        .order_by(Order.created_at.desc(), Order.id.desc())
        .limit(limit)
    )
    return list(rows)


async def unnotified_payments(
    db: Database, bot_name: str, older_than: float = 60.0
) -> list[tuple[Order, int, str]]:
    """Paid orders whose user was never told (a crash between the credit and the reply): each with the
    user's balance and language, for the reconciler to tell them. Only those paid `older_than` seconds
    ago: a fresher one's handler is still about to tell the user itself."""
    cutoff = datetime.now(UTC) - timedelta(seconds=older_than)
    async with db.sessions() as session:
        rows = await session.execute(
            select(Order, User.balance, User.language)
            .join(User, User.id == Order.user_id)
            .where(
                Order.bot_name == bot_name,
                Order.status == OrderStatus.paid,
                Order.notified.is_(False),
                Order.paid_at < cutoff,
            )
            .limit(100)
        )
        return [(order, int(balance), language) for order, balance, language in rows]


async def scanned_transactions(db: Database, bot_name: str) -> int:
    """How many of the bot's Star transactions (oldest first) the reconciler has already looked at."""
    async with db.sessions() as session:
        value = await session.scalar(
            select(RuntimeFlag.value).where(RuntimeFlag.key == _scanned_flag(bot_name))
        )
    return int(value) if value is not None and value.isdigit() else 0


async def store_scanned_transactions(db: Database, bot_name: str, count: int) -> None:
    async with db.transaction() as session:
        flag = await session.get(RuntimeFlag, _scanned_flag(bot_name), with_for_update=True)
        if flag is None:
            session.add(RuntimeFlag(key=_scanned_flag(bot_name), value=str(count)))
        elif int(flag.value) < count:
            flag.value = str(count)


def _scanned_flag(bot_name: str) -> str:
    return f"stars_scanned:{bot_name}"[:64]
