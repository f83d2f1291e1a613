"""Stars payments (SPEC §4.7) on SQLite and PostgreSQL: an order checked before it is paid, a payment
credited once whoever records it and however often, a refund debited once."""

import asyncio

import pytest
from aiogram.fsm.storage.base import StorageKey
from sqlalchemy import func, select

from bot.telegram.conversation_storage import DatabaseStorage
from generation import ledger, payments
from generation.catalog import TopUpPackage
from generation.payments import PreCheckoutProblem, RefundRefused
from generation.store import ConversationState, Database, LedgerEntry, Order, OrderStatus, User
from generation.users import ensure_user

PACKAGE = TopUpPackage(id="stars-100", stars=100, price=90)


async def new_user(db: Database, telegram_id: int = 1, bot_name: str = "main") -> User:
    async with db.transaction() as session:
        user, _ = await ensure_user(session, bot_name, telegram_id, username=None, language="en")
        return user


async def balance_and_sum(db: Database, user_id: int) -> tuple[int, int]:
    async with db.sessions() as session:
        balance = await ledger.balance_of(session, user_id)
        total = await session.scalar(
            select(func.sum(LedgerEntry.amount)).where(LedgerEntry.user_id == user_id)
        )
        return balance, int(total or 0)


async def pay(db: Database, order: Order, charge_id: str = "charge-1") -> payments.PaymentRecorded:
    return await payments.record_payment(
        db,
        bot_name=order.bot_name,
        telegram_id=order.telegram_id,
        order_id=order.id,
        charge_id=charge_id,
        amount=order.amount,
    )


async def test_an_order_is_unguessable_and_checked_before_payment(db: Database) -> None:
    user = await new_user(db)
    order = await payments.create_order(db, user, PACKAGE)
    other = await payments.create_order(db, user, PACKAGE)
    assert len(order.id) == 32 and order.id != other.id

    async def check(**changes: object) -> PreCheckoutProblem | None:
        fields: dict[str, object] = {
            "order_id": order.id,
            "bot_name": "main",
            "telegram_id": 1,
            "currency": "XTR",
            "amount": 90,
        }
        fields.update(changes)
        return await payments.check_pre_checkout(db, **fields)  # type: ignore[arg-type]

    assert await check() is None
    assert await check(order_id="0" * 32) is PreCheckoutProblem.unknown_order
    assert await check(order_id="x" * 200) is PreCheckoutProblem.unknown_order
    assert await check(telegram_id=2) is PreCheckoutProblem.unknown_order
    assert await check(bot_name="other") is PreCheckoutProblem.unknown_order
    assert await check(amount=1) is PreCheckoutProblem.wrong_amount
    assert await check(currency="USD") is PreCheckoutProblem.wrong_amount
    await pay(db, order)
    assert await check() is PreCheckoutProblem.not_pending


async def test_a_payment_recorded_many_times_at_once_credits_once(db: Database) -> None:
    user = await new_user(db)
    order = await payments.create_order(db, user, PACKAGE)
    results = await asyncio.gather(*(pay(db, order) for _ in range(8)))
    assert sum(result.credited for result in results) == 1
    assert await balance_and_sum(db, user.id) == (100, 100)
    async with db.sessions() as session:
        stored = await session.get(Order, order.id)
        assert stored is not None
        assert (stored.status, stored.charge_id) == (OrderStatus.paid, "charge-1")


async def test_two_payments_of_one_order_are_both_credited(db: Database) -> None:
    """Telegram took the money twice (two pre-checkouts approved before either was paid): the user
    paid twice, so is credited twice, each payment an order of its own that can be refunded."""
    user = await new_user(db)
    order = await payments.create_order(db, user, PACKAGE)
    first, second = await pay(db, order, "charge-1"), await pay(db, order, "charge-2")
    assert first.credited and second.credited
    assert await balance_and_sum(db, user.id) == (200, 200)
    async with db.sessions() as session:
        assert len(await payments.recent_orders(session, user.id)) == 2


async def test_a_payment_for_no_order_of_this_user_credits_nothing(db: Database) -> None:
    user = await new_user(db)
    stranger = await new_user(db, telegram_id=2)
    order = await payments.create_order(db, user, PACKAGE)
    recorded = await payments.record_payment(
        db, bot_name="main", telegram_id=2, order_id=order.id, charge_id="c", amount=90
    )
    assert recorded.order is None and not recorded.credited
    assert await balance_and_sum(db, stranger.id) == (0, 0)


async def test_a_payment_of_another_amount_or_currency_credits_nothing_and_can_be_refunded(
    db: Database,
) -> None:
    """Telegram charges only what the pre-checkout approved: a payment that differs from its order is
    not that order's. Nothing is credited (or announced), the order stays pending, and the payment is
    kept under its charge id so that an admin can refund it; a redelivery changes nothing."""
    user = await new_user(db)
    order = await payments.create_order(db, user, PACKAGE)
    for charge_id, amount, currency in (("cheap", 1, "XTR"), ("dollars", 90, "USD"), ("cheap", 1, "XTR")):
        recorded = await payments.record_payment(
            db,
            bot_name="main",
            telegram_id=1,
            order_id=order.id,
            charge_id=charge_id,
            amount=amount,
            currency=currency,
        )
        assert recorded.order is None and not recorded.credited
    assert await balance_and_sum(db, user.id) == (0, 0)
    async with db.sessions() as session:
        stored = await session.get(Order, order.id)
        assert stored is not None and stored.status == OrderStatus.pending
        kept = {o.charge_id: o.stars for o in await payments.recent_orders(session, user.id)}
    assert kept == {None: 100, "cheap": 0, "dollars": 0}  # the pending order, and the two kept payments
    started = await payments.begin_refund(db, "cheap", force=False)
    refunded = await payments.finish_refund(db, started.id, note="by admin 7")
    assert refunded.debited == 0 and await balance_and_sum(db, user.id) == (0, 0)
    # The order itself can still be paid, and then it is credited.
    assert (await pay(db, order)).credited
    assert await balance_and_sum(db, user.id) == (100, 100)


async def test_a_refund_names_the_admin_on_its_ledger_line(db: Database) -> None:
    user = await new_user(db)
    order = await payments.create_order(db, user, PACKAGE)
    await pay(db, order)
    await payments.begin_refund(db, "charge-1", force=False)
    await payments.finish_refund(db, order.id, note="by admin 42")
    async with db.sessions() as session:
        line = await session.scalar(
            select(LedgerEntry).where(LedgerEntry.operation_key == payments.payment_refund_key("charge-1"))
        )
    assert line is not None and (line.amount, line.note) == (-100, "by admin 42")


async def test_refund_debits_once_and_is_refused_when_spent(db: Database) -> None:
    user = await new_user(db)
    order = await payments.create_order(db, user, PACKAGE)
    await pay(db, order)
    async with db.transaction() as session:
        await ledger.charge(session, user.id, 30, "charge:spent")
    with pytest.raises(RefundRefused) as refused:
        await payments.begin_refund(db, "charge-1", force=False)
    assert refused.value.reason == "spent" and refused.value.details == {"balance": 70, "stars": 100}
    with pytest.raises(RefundRefused, match="unknown_charge"):
        await payments.begin_refund(db, "nope", force=False)

    started = await payments.begin_refund(db, "charge-1", force=True)
    assert started.status == OrderStatus.refunding
    # Two admins at once (or a retry after a crash once Telegram refunded): one debit.
    results = await asyncio.gather(*(payments.finish_refund(db, order.id) for _ in range(4)))
    assert sum(result.applied for result in results) == 1
    assert {result.debited for result in results} == {70}
    assert await balance_and_sum(db, user.id) == (0, 0)
    with pytest.raises(RefundRefused, match="already_refunded"):
        await payments.begin_refund(db, "charge-1", force=True)
    async with db.sessions() as session:
        stored = await session.get(Order, order.id)
        assert stored is not None and (stored.status, stored.refunded_stars) == (OrderStatus.refunded, 70)


async def test_a_refund_telegram_refused_leaves_the_order_paid(db: Database) -> None:
    user = await new_user(db)
    order = await payments.create_order(db, user, PACKAGE)
    await pay(db, order)
    await payments.begin_refund(db, "charge-1", force=False)
    await payments.cancel_refund(db, order.id)
    async with db.sessions() as session:
        stored = await session.get(Order, order.id)
        assert stored is not None and stored.status == OrderStatus.paid
    assert await balance_and_sum(db, user.id) == (100, 100)


async def test_conversation_state_is_kept_in_the_database(db: Database) -> None:
    key = StorageKey(bot_id=1, chat_id=2, user_id=3)
    first, second = DatabaseStorage(db), DatabaseStorage(db)  # two processes
    await first.set_state(key, "VoiceAvatar:waiting_for_recording")
    await first.update_data(key, {"word": "zyx"})
    assert await second.get_state(key) == "VoiceAvatar:waiting_for_recording"
    assert await second.get_data(key) == {"word": "zyx"}
    assert await second.get_state(StorageKey(bot_id=9, chat_id=2, user_id=3)) is None
    await second.set_state(key, None)
    await second.set_data(key, {})
    assert await first.get_state(key) is None and await first.get_data(key) == {}
    async with db.sessions() as session:  # an ended conversation leaves no row behind
        assert await session.scalar(select(func.count()).select_from(ConversationState)) == 0
    await asyncio.gather(
        *(first.set_state(StorageKey(bot_id=1, chat_id=5, user_id=5), "s") for _ in range(5))
    )
    assert await second.get_state(StorageKey(bot_id=1, chat_id=5, user_id=5)) == "s"
