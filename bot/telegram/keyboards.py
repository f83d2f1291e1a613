"""Inline keyboards and buttons that more than one router shows."""

from __future__ import annotations

from aiogram.types import InaccessibleMessage, InlineKeyboardButton, InlineKeyboardMarkup, Message

from generation.texts import count_of, text

# Callback data of the "Top up" button; bot/telegram/routers/payments.py answers it with the packages,
# "buy-missing:<stars>" with the packages and how many stars are missing, and "buy:<package>" with that
# package's invoice.
BUY_CALLBACK = "buy"
BUY_MISSING_CALLBACK = "buy-missing:"
BUY_PACKAGE_CALLBACK = "buy:"


def topup_button(lang: str) -> InlineKeyboardButton:
    return InlineKeyboardButton(text=text("topup_button", lang), callback_data=BUY_CALLBACK)


def topup_keyboard(lang: str, missing: int = 0) -> InlineKeyboardMarkup:
    button = topup_button(lang)
    if missing > 0:
        button = InlineKeyboardButton(text=button.text, callback_data=f"{BUY_MISSING_CALLBACK}{missing}")
    return InlineKeyboardMarkup(inline_keyboard=[[button]])


async def answer_insufficient_balance(
    message: Message | InaccessibleMessage, lang: str, *, needed: int, balance: int
) -> None:
    """'Not enough stars', how many are missing, and a way forward: the Top up button (in the chat of a
    message the bot can no longer see, too: a button pressed under an old one)."""
    missing = max(needed - balance, 0)
    await message.answer(
        text(
            "insufficient_balance",
            lang,
            needed=needed,
            balance=balance,
            missing=count_of(missing, "star", lang),
        ),
        reply_markup=topup_keyboard(lang, missing),
    )
