"""Payments that slipped past the handlers are found and credited: the reconciler reads each bot's Star
transactions from Telegram (its own record of every payment) and records those the ledger lacks, and
tells users whose credit was never announced.

Why: in polling mode aiogram confirms a batch of updates before their handlers finish, and a webhook
is answered before its update is handled, so a process that dies at the wrong moment loses a
`successful_payment` update. The money is Telegram's fact, not the update's: reading it back makes
"credited exactly once, whatever happens" hold through a crash too.
"""

from __future__ import annotations

import asyncio

from aiogram import Bot
from aiogram.types import TransactionPartnerUser
from loguru import logger

from generation import payments
from generation.services import Services
from generation.texts import count_of, text

PAGE = 100  # getStarTransactions returns at most 100 at a time


async def reconcile_payments(services: Services, bot_name: str, bot: Bot) -> int:
    """Record every incoming invoice payment not yet seen, then tell users of unannounced credits;
    answers how many payments were credited here."""
    credited = 0
    offset = await payments.scanned_transactions(services.db, bot_name)
    while True:
        page = await bot.get_star_transactions(offset=offset, limit=PAGE)
        for transaction in page.transactions:
            source = transaction.source
            if not isinstance(source, TransactionPartnerUser) or source.invoice_payload is None:
                continue  # a refund, a withdrawal, or a payment that was not for an invoice
            if transaction.receiver is not None:
                continue  # money going out (a refund), not coming in
            recorded = await payments.record_payment(
                services.db,
                bot_name=bot_name,
                telegram_id=source.user.id,
                order_id=source.invoice_payload,
                charge_id=transaction.id,
                amount=transaction.amount,
            )
            if recorded.credited:
                credited += 1
                logger.bind(user=source.user.id, bot=bot_name).warning(
                    "payment {} was missing from the ledger; credited by the reconciler", transaction.id
                )
            elif recorded.order is None:
                logger.bind(user=source.user.id, bot=bot_name).error(
                    "payment {} matches no order; refund it with /refund", transaction.id
                )
        offset += len(page.transactions)
        await payments.store_scanned_transactions(services.db, bot_name, offset)
        if len(page.transactions) < PAGE:
            break
    await _announce_unannounced(services, bot_name)
    return credited


async def _announce_unannounced(services: Services, bot_name: str) -> None:
    for order, balance, language in await payments.unnotified_payments(services.db, bot_name):
        message = text(
            "payment_received", language, credited=count_of(order.stars, "star", language), balance=balance
        )
        try:
            await services.delivery.send_text(bot_name, order.telegram_id, message)
        except Exception as error:  # blocked the bot, or Telegram is down: the credit stands
            logger.bind(user=order.telegram_id, bot=bot_name).info("could not announce a payment: {}", error)
            continue
        await payments.mark_notified(services.db, order.id)


async def reconcile_forever(services: Services, bots: dict[str, Bot], every: float) -> None:
    """At start, then every `every` seconds, for every bot; a failure waits for the next round."""
    while True:
        for bot_name, bot in bots.items():
            try:
                await reconcile_payments(services, bot_name, bot)
            except Exception as error:
                logger.bind(bot=bot_name).warning("could not reconcile payments: {!r}", error)
        await asyncio.sleep(every)
