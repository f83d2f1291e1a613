"""Inline keyboards and buttons that more than one router shows."""

from __future__ import annotations

from aiogram.types import InlineKeyboardButton, InlineKeyboardMarkup, Message

from generation.texts import count_of, text

# Callback data of the "Top up" button; bot/routers/payments.py answers it with the packages, and
# "buy:<package>" with that package's invoice.
BUY_CALLBACK = "buy"
BUY_PACKAGE_CALLBACK = "buy:"


def topup_button(lang: str) -> InlineKeyboardButton:
    return InlineKeyboardButton(text=text("topup_button", lang), callback_data=BUY_CALLBACK)


def topup_keyboard(lang: str) -> InlineKeyboardMarkup:
    return InlineKeyboardMarkup(inline_keyboard=[[topup_button(lang)]])


async def answer_insufficient_balance(message: Message, lang: str, *, needed: int, balance: int) -> None:
    """'Not enough stars', how many are missing, and a way forward: the Top up button."""
    missing = count_of(max(needed - balance, 0), "star", lang)
    await message.answer(
        text("insufficient_balance", lang, needed=needed, balance=balance, missing=missing),
        reply_markup=topup_keyboard(lang),
    )
