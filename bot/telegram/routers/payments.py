"""Top-ups with Telegram Stars: /buy and the Top up buttons, the invoice, the pre-checkout check, the
successful payment (credited once), /paysupport, /terms, and the admins' /refund.

The decisions and the money are generation/payments.py's; this router only speaks Telegram.
"""

from __future__ import annotations

from aiogram import Bot, F, Router
from aiogram.exceptions import TelegramAPIError, TelegramBadRequest
from aiogram.filters import Command, CommandObject
from aiogram.types import (
    CallbackQuery,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    LabeledPrice,
    Message,
    PreCheckoutQuery,
)
from loguru import logger

from bot.telegram.arguments import whole_number
from bot.telegram.filters import in_loop
from bot.telegram.keyboards import BUY_CALLBACK, BUY_MISSING_CALLBACK, BUY_PACKAGE_CALLBACK
from generation import payments
from generation.services import Services
from generation.store import User
from generation.texts import count_of, text
from generation.users import find_user

# What Telegram answers refundStarPayment for a charge it already refunded: a refund that crashed
# after Telegram returned the Stars is finished on the next try instead of failing forever.
ALREADY_REFUNDED = "CHARGE_ALREADY_REFUNDED"
# The most stars a "buy-missing:<stars>" button may say are missing (more than any price).
MAX_MISSING = 10**9


async def buy_command(message: Message, user: User, lang: str, services: Services) -> None:
    await _offer_packages(message, user, lang, services, missing=0)


async def buy_button(query: CallbackQuery, user: User, lang: str, services: Services) -> None:
    data = query.data or ""
    missing = 0
    if data.startswith(BUY_MISSING_CALLBACK):
        # Ours, but a client can send any callback data: a number that is none marks no package.
        missing = whole_number(data.removeprefix(BUY_MISSING_CALLBACK), minimum=0, maximum=MAX_MISSING) or 0
    await query.answer()
    if isinstance(query.message, Message):
        await _offer_packages(query.message, user, lang, services, missing=missing)


async def _offer_packages(
    message: Message, user: User, lang: str, services: Services, *, missing: int
) -> None:
    packages = list(services.catalog.packages.values())
    if not packages:
        await message.answer(text("buy_nothing_for_sale", lang))
        return
    # The smallest package that covers what is missing is marked, so the choice is one tap.
    covering = next((package for package in packages if package.stars >= missing), None) if missing else None
    keyboard = InlineKeyboardMarkup(
        inline_keyboard=[
            [
                InlineKeyboardButton(
                    text=("👉 " if package is covering else "")
                    + text("buy_package_button", lang, stars=package.stars, price=package.price),
                    callback_data=BUY_PACKAGE_CALLBACK + package.id,
                )
            ]
            for package in packages
        ]
    )
    if missing:
        intro = text(
            "buy_choose_missing", lang, missing=count_of(missing, "star", lang), balance=user.balance
        )
    else:
        intro = text("buy_choose", lang, balance=user.balance)
    await message.answer(intro, reply_markup=keyboard)


async def package_chosen(query: CallbackQuery, bot: Bot, user: User, lang: str, services: Services) -> None:
    """An order row first, then the invoice: the invoice's payload is the order's id."""
    package = services.catalog.package((query.data or "").removeprefix(BUY_PACKAGE_CALLBACK))
    if package is None or not isinstance(query.message, Message):
        await query.answer()
        return
    order = await payments.create_order(services.db, user, package)
    credited = count_of(package.stars, "star", lang)
    await bot.send_invoice(
        chat_id=query.message.chat.id,
        title=text("invoice_title", lang, credited=credited)[:32],
        description=text("invoice_description", lang, credited=credited),
        payload=order.id,
        currency=payments.CURRENCY,
        prices=[LabeledPrice(label=text("invoice_label", lang, stars=package.stars), amount=package.price)],
    )
    await query.answer()
    logger.bind(user=user.telegram_id, bot=user.bot_name).info(
        "invoice sent for order {} ({} XTR)", order.id, package.price
    )


async def pre_checkout(query: PreCheckoutQuery, bot_name: str, lang: str, services: Services) -> None:
    """Telegram waits at most 10 seconds for this answer: one read, then the answer."""
    problem = await payments.check_pre_checkout(
        services.db,
        order_id=query.invoice_payload,
        bot_name=bot_name,
        telegram_id=query.from_user.id,
        currency=query.currency,
        amount=query.total_amount,
    )
    if problem is None:
        await query.answer(ok=True)
        return
    logger.bind(user=query.from_user.id, bot=bot_name).warning("pre-checkout refused: {}", problem.value)
    await query.answer(ok=False, error_message=text(f"precheckout_{problem.value}", lang))


async def successful_payment(message: Message, bot_name: str, lang: str, services: Services) -> None:
    payment = message.successful_payment
    assert payment is not None and message.from_user is not None
    charge_id = payment.telegram_payment_charge_id
    recorded = await payments.record_payment(
        services.db,
        bot_name=bot_name,
        telegram_id=message.from_user.id,
        order_id=payment.invoice_payload,
        charge_id=charge_id,
        amount=payment.total_amount,
        currency=payment.currency,
    )
    log = logger.bind(user=message.from_user.id, bot=bot_name)
    if recorded.order is None:
        log.error("payment {} matches no order of this user; refund it with /refund", charge_id)
        await message.answer(text("payment_unmatched", lang, charge_id=charge_id))
        return
    if recorded.credited:
        log.info(
            "payment {} credited: +{} stars (order {})", charge_id, recorded.order.stars, recorded.order.id
        )
    if recorded.order.notified:
        return  # a redelivered update: credited and told already
    await message.answer(
        text(
            "payment_received",
            lang,
            credited=count_of(recorded.order.stars, "star", lang),
            balance=recorded.balance,
        )
    )
    await payments.mark_notified(services.db, recorded.order.id)


async def paysupport(message: Message, services: Services) -> None:
    await message.answer(services.settings.paysupport_text)


async def terms(message: Message, services: Services) -> None:
    await message.answer(services.settings.terms_text)


def build_router() -> Router:
    """A new router each time: aiogram attaches a router to one dispatcher only."""
    router = Router(name="payments")
    router.message.register(buy_command, Command("buy"))
    router.message.register(paysupport, Command("paysupport"))
    router.message.register(terms, Command("terms"))
    router.message.register(successful_payment, in_loop(F.successful_payment))
    router.callback_query.register(buy_button, in_loop(F.data == BUY_CALLBACK))
    router.callback_query.register(buy_button, in_loop(F.data.startswith(BUY_MISSING_CALLBACK)))
    router.callback_query.register(package_chosen, in_loop(F.data.startswith(BUY_PACKAGE_CALLBACK)))
    router.pre_checkout_query.register(pre_checkout)
    return router


def build_refund_router(admin_ids: list[int]) -> Router:
    """/refund <charge_id> [force], for admins only: Telegram returns the Stars through the bot that
    was paid, then the stars are debited once."""
    router = Router(name="payments-admin")
    admins = set(admin_ids)
    router.message.filter(
        in_loop(lambda message: message.from_user is not None and message.from_user.id in admins)
    )

    @router.message(Command("refund"))
    async def refund(
        message: Message, command: CommandObject, lang: str, services: Services, bots: dict[str, Bot]
    ) -> None:
        words = (command.args or "").split()
        if not 1 <= len(words) <= 2 or (len(words) == 2 and words[1].lower() != "force"):
            await message.answer(text("refund_usage", lang))
            return
        charge_id, force = words[0], len(words) == 2
        try:
            order = await payments.begin_refund(services.db, charge_id, force=force)
        except payments.RefundRefused as refused:
            await message.answer(text(f"refund_{refused.reason}", lang, **refused.details))
            return
        bot = bots.get(order.bot_name)
        telegram_refusal = await _refund_at_telegram(bot, order.telegram_id, charge_id, order.bot_name)
        if telegram_refusal is not None:
            await payments.cancel_refund(services.db, order.id)
            await message.answer(text("refund_telegram_refused", lang, reason=telegram_refusal))
            return
        admin = message.from_user.id if message.from_user else message.chat.id
        recorded = await payments.finish_refund(services.db, order.id, note=f"by admin {admin}")
        await message.answer(
            text(
                "refund_done",
                lang,
                amount=order.amount,
                telegram_id=order.telegram_id,
                bot=order.bot_name,
                debited=recorded.debited,
                balance=recorded.balance,
            )
        )
        if recorded.applied and bot is not None:
            await _tell_refunded(bot, order.bot_name, order.telegram_id, services, order.amount, recorded)

    return router


async def _refund_at_telegram(bot: Bot | None, telegram_id: int, charge_id: str, bot_name: str) -> str | None:
    """Ask Telegram to return the Stars; None when they are returned (now or by an earlier try), else
    why not."""
    if bot is None:
        return f"bot {bot_name} is not configured in this process"
    try:
        await bot.refund_star_payment(user_id=telegram_id, telegram_payment_charge_id=charge_id)
    except TelegramBadRequest as error:
        return None if ALREADY_REFUNDED in error.message else error.message
    except TelegramAPIError as error:
        return error.message
    return None


async def _tell_refunded(
    bot: Bot,
    bot_name: str,
    telegram_id: int,
    services: Services,
    amount: int,
    recorded: payments.RefundRecorded,
) -> None:
    async with services.db.sessions() as session:
        user = await find_user(session, bot_name, telegram_id)
    language = user.language if user is not None else "en"
    try:
        await bot.send_message(
            telegram_id,
            text(
                "refund_notice", language, amount=amount, debited=recorded.debited, balance=recorded.balance
            ),
        )
    except TelegramAPIError as error:  # blocked the bot: the refund stands
        logger.info("could not tell user {} about a refund: {}", telegram_id, error.message)
