"""Top-ups with Telegram Stars, as a user pays in Telegram: the real aiogram polling against the fake
Bot API's payment flow (sendInvoice in XTR, pre_checkout_query, successful_payment, refundStarPayment)."""

from __future__ import annotations

import asyncio
import re

import pytest
from sqlalchemy import select

from app import App
from bot.telegram import payment_reconciler
from generation import payments
from generation.payments import payment_refund_key
from generation.store import LedgerEntry, Order, OrderStatus
from tests.conftest import ADMIN_ID, AppFactory
from tests.e2e.helpers import USER, Chat, balance_and_ledger_sum, generations_of
from tests.fakes.replicate import FakeReplicate
from tests.fakes.telegram import Call, FakeTelegram, Payment


async def buy(
    chat: Chat, package: str = "stars-100", *, via: Call | None = None, menu_text: str = "Choose a package"
) -> Call:
    """Open the packages (with /buy or a Top up button), choose one, get the invoice."""
    if via is None:
        menu = await chat.ask("/buy", menu_text)
    else:
        chat.telegram.press_button(chat.token, user_id=chat.user_id, message=via.result, data=via_button(via))
        menu = await chat.reply(menu_text)
    invoices_before = len(chat.telegram.invoices(chat.token))
    chat.telegram.press_button(chat.token, user_id=chat.user_id, message=menu.result, data=f"buy:{package}")
    invoice = await chat.telegram.wait_for(lambda call: call.method == "sendInvoice" and call.ok)
    assert len(chat.telegram.invoices(chat.token)) == invoices_before + 1
    return invoice


def via_button(call: Call) -> str:
    markup = call.params["reply_markup"]
    [[button]] = markup["inline_keyboard"]
    return str(button["callback_data"])


async def pay(chat: Chat, invoice: Call) -> Payment:
    payment = await chat.telegram.pay(chat.token, chat.user_id, invoice.result["message_id"])
    assert payment.ok, payment.error_message
    return payment


async def orders_of(app: App) -> list[Order]:
    assert app.services is not None
    async with app.services.db.sessions() as session:
        return list(await session.scalars(select(Order).order_by(Order.created_at)))


async def test_a_new_user_tops_up_with_stars_and_then_generates(
    make_app: AppFactory, telegram: FakeTelegram, replicate: FakeReplicate
) -> None:
    app = await make_app(new_user_bonus=0)
    chat = Chat(telegram)
    await chat.ask("/start", "Your balance: 0 ⭐")

    refusal = await chat.ask("/image a red fox", "Not enough stars")
    assert "You are 1 star short" in (refusal.text or "")
    assert via_button(refusal) == "buy-missing:1"
    assert replicate.creates == [] and await generations_of(app) == []

    invoice = await buy(chat, via=refusal)
    menu = await chat.reply("You need 1 star more")
    labels = [row[0]["text"] for row in menu.params["reply_markup"]["inline_keyboard"]]
    assert labels[0].startswith("👉 100 ⭐")  # the smallest package that covers it is marked
    assert len(labels) == 4
    params = invoice.params
    assert params["currency"] == "XTR"
    assert params.get("provider_token") in (None, "")
    assert [price["amount"] for price in params["prices"]] == [100]
    [order] = await orders_of(app)
    assert params["payload"] == order.id and re.fullmatch(r"[0-9a-f]{32}", order.id)
    assert "fox" not in params["payload"]
    assert (order.status, order.stars, order.amount) == (OrderStatus.pending, 100, 100)

    payment = await pay(chat, invoice)
    await chat.reply("Payment received: +100 stars. Balance: 100 ⭐")
    # Telegram delivers the same successful_payment again: no second credit, no second message.
    telegram.push_update(chat.token, payment.update or {})
    await chat.ask("/balance", "Your balance: 100 ⭐")
    assert sum("Payment received" in message for message in chat.texts()) == 1
    [order] = await orders_of(app)
    assert (order.status, order.charge_id, order.notified) == (OrderStatus.paid, payment.charge_id, True)
    assert await balance_and_ledger_sum(app) == (100, 100)

    await chat.ask("/image a red fox", "Charged 1 ⭐. Balance: 99 ⭐")
    assert len(replicate.creates) == 1
    assert await balance_and_ledger_sum(app) == (99, 99)


async def test_forged_stale_and_wrong_pre_checkouts_are_refused(
    make_app: AppFactory, telegram: FakeTelegram
) -> None:
    app = await make_app(new_user_bonus=0)
    chat = Chat(telegram)
    invoice = await buy(chat, "stars-500")
    [order] = await orders_of(app)

    async def pre_checkout(user_id: int, payload: str, amount: int, currency: str = "XTR") -> str | None:
        query = telegram.push_pre_checkout(
            chat.token, user_id, payload=payload, total_amount=amount, currency=currency
        )
        answer = await telegram.pre_checkout_answer(query)
        return None if answer["ok"] else str(answer["error_message"])

    assert "not valid here" in (await pre_checkout(USER, "0" * 32, 475) or "")  # never invoiced
    assert "not valid here" in (await pre_checkout(4242, order.id, 475) or "")  # another user's order
    assert "does not match" in (await pre_checkout(USER, order.id, 1) or "")  # another amount
    assert "does not match" in (await pre_checkout(USER, order.id, 475, "USD") or "")
    assert await pre_checkout(USER, order.id, 475) is None  # the real one is approved

    await pay(chat, invoice)
    await chat.reply("Balance: 500 ⭐")
    assert "already been paid" in (await pre_checkout(USER, order.id, 475) or "")  # stale: paid
    assert await balance_and_ledger_sum(app) == (500, 500)


async def test_russian_user_sees_payment_texts_in_russian(
    make_app: AppFactory, telegram: FakeTelegram
) -> None:
    await make_app(new_user_bonus=0)
    chat = Chat(telegram, user_id=3003, language="ru")
    invoice = await buy(chat, "stars-1000", menu_text="Выберите пакет")
    assert invoice.params["title"] == "Пополнение: 1000 звёзд"
    payment = await telegram.pay(chat.token, chat.user_id, invoice.result["message_id"], language_code="ru")
    assert payment.ok
    await chat.reply("Оплата получена: +1000 звёзд. Баланс: 1000 ⭐")


async def test_admin_refund_goes_through_the_paid_bot_once(
    make_app: AppFactory, telegram: FakeTelegram
) -> None:
    app = await make_app(new_user_bonus=0)
    chat = Chat(telegram)
    payment = await pay(chat, await buy(chat))
    await chat.reply("Balance: 100 ⭐")
    admin = Chat(telegram, user_id=ADMIN_ID)

    await admin.ask(f"/refund {payment.charge_id}", "Refunded 100 Telegram Stars")
    await chat.reply("was refunded; 100 ⭐ were taken from your balance. Balance: 0 ⭐")
    assert telegram.refunds(chat.token) == [(USER, payment.charge_id)]
    await admin.ask(f"/refund {payment.charge_id}", "already been refunded")
    assert telegram.refunds(chat.token) == [(USER, payment.charge_id)]
    [order] = await orders_of(app)
    assert (order.status, order.refunded_stars) == (OrderStatus.refunded, 100)
    assert await balance_and_ledger_sum(app) == (0, 0)
    assert app.services is not None and payment.charge_id is not None
    refund_key = payment_refund_key(payment.charge_id)
    async with app.services.db.sessions() as session:
        line = await session.scalar(select(LedgerEntry).where(LedgerEntry.operation_key == refund_key))
    assert line is not None and line.note == f"by admin {ADMIN_ID}"  # who refunded it, on the ledger line

    await admin.ask("/refund", "Usage: /refund")
    await admin.ask("/refund nope", "No payment with this charge id")
    # A user cannot refund anything.
    await chat.ask(f"/refund {payment.charge_id}", "I don't know this command")


async def test_refund_of_spent_stars_is_refused_unless_forced(
    make_app: AppFactory, telegram: FakeTelegram, replicate: FakeReplicate
) -> None:
    app = await make_app(new_user_bonus=0)
    chat = Chat(telegram)
    payment = await pay(chat, await buy(chat))
    await chat.reply("Balance: 100 ⭐")
    await chat.ask("/image 4 a castle", "Charged 4 ⭐. Balance: 96 ⭐")
    admin = Chat(telegram, user_id=ADMIN_ID)

    await admin.ask(f"/refund {payment.charge_id}", "already spent these stars (balance 96 ⭐ of the 100 ⭐")
    assert telegram.refunds(chat.token) == []
    await admin.ask(f"/refund {payment.charge_id} force", "debited 96 ⭐. Their balance: 0 ⭐")
    assert telegram.refunds(chat.token) == [(USER, payment.charge_id)]
    assert await balance_and_ledger_sum(app) == (0, 0)


async def test_a_payment_whose_update_was_lost_is_credited_by_the_reconciler(
    make_app: AppFactory, telegram: FakeTelegram, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The process dies between Telegram's payment and our credit (here: the handler fails): the
    reconciler reads the bot's Star transactions and credits it once, and tells the user."""
    app = await make_app(new_user_bonus=0, payment_reconcile_every=3600)
    chat = Chat(telegram)
    invoice = await buy(chat)

    crashed = asyncio.Event()

    async def crash(*args: object, **kwargs: object) -> None:
        crashed.set()
        raise ConnectionError("the process died here")

    monkeypatch.setattr(payments, "record_payment", crash)
    await pay(chat, invoice)
    await asyncio.wait_for(crashed.wait(), 10)
    assert await balance_and_ledger_sum(app) == (0, 0)
    monkeypatch.undo()

    assert app.services is not None
    bot = app.bots["image_bot"]
    assert await payment_reconciler.reconcile_payments(app.services, "image_bot", bot) == 1
    assert await payment_reconciler.reconcile_payments(app.services, "image_bot", bot) == 0
    assert await balance_and_ledger_sum(app) == (100, 100)
    # Announced by the next round once it is old enough that no handler is still about to.
    async with app.services.db.transaction() as session:
        order = (await session.scalars(select(Order))).one()
        order.paid_at = order.created_at.replace(year=order.created_at.year - 1)
    await payment_reconciler.reconcile_payments(app.services, "image_bot", bot)
    await chat.reply("Payment received: +100 stars. Balance: 100 ⭐")
    await payment_reconciler.reconcile_payments(app.services, "image_bot", bot)
    assert sum("Payment received" in message for message in chat.texts()) == 1


async def test_paysupport_and_terms_answer_from_settings(
    make_app: AppFactory, telegram: FakeTelegram
) -> None:
    await make_app(paysupport_text="Write to @support_person", terms_text="All sales are final-ish")
    chat = Chat(telegram)
    await chat.ask("/paysupport", "Write to @support_person")
    await chat.ask("/terms", "All sales are final-ish")
