"""Numbers typed after commands: only the digits 0-9, within bounds, answered clearly otherwise and never
a crash; /grant bounded per grant and per balance, its ledger line naming the admin who gave it."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from app import App
from bot.telegram.routers.admin import MAX_BALANCE, MAX_GRANT
from generation import ledger
from generation.store import LedgerEntry, User
from tests.conftest import ADMIN_ID, AppFactory
from tests.e2e.helpers import USER, Chat, balance_and_ledger_sum, generations_of
from tests.fakes.replicate import FakeReplicate
from tests.fakes.telegram import FakeTelegram

GROUP = -100500


async def test_a_count_in_other_digits_or_signs_is_refused_clearly_and_costs_nothing(
    make_app: AppFactory, telegram: FakeTelegram, replicate: FakeReplicate
) -> None:
    """'--5' and '²' passed str.isdigit() and then crashed int(): the user got no answer at all."""
    app = await make_app()
    chat = Chat(telegram)
    for command in ("/image --5 cat", "/image ² cat", "/image ٣ cats", "/photo ² me", "/image 1.5 cats"):
        await chat.ask(command, "The number of images must be from 1 to 4, written with the digits 0-9")
    ru = Chat(telegram, user_id=3003, language="ru")
    await ru.ask("/image −2 лисы", "Количество изображений должно быть от 1 до 4, цифрами 0-9")
    assert replicate.creates == []
    assert await generations_of(app) == []
    assert await balance_and_ledger_sum(app) == (10, 10)


@pytest.mark.parametrize("amount", ["²", "٥", "-5", "0", str(MAX_GRANT + 1), "9" * 30])
async def test_a_grant_of_what_cannot_be_granted_is_refused(
    make_app: AppFactory, telegram: FakeTelegram, amount: str
) -> None:
    """'²' crashed the handler; a huge amount was credited (on SQLite the balance became an inexact
    REAL past 2**63)."""
    app = await make_app()
    await Chat(telegram).ask("/start", "Your balance: 10 ⭐")
    admin = Chat(telegram, user_id=ADMIN_ID)
    await admin.ask(f"/grant {USER} {amount}", f"a whole number from 1 to {MAX_GRANT}")
    assert await balance_and_ledger_sum(app) == (10, 10)


async def test_a_grant_to_an_id_in_other_digits_is_refused(
    make_app: AppFactory, telegram: FakeTelegram
) -> None:
    app = await make_app()
    await Chat(telegram).ask("/start", "Your balance: 10 ⭐")
    admin = Chat(telegram, user_id=ADMIN_ID)
    await admin.ask("/grant ١٠٠١ 5", "Usage: /grant <telegram_id> <stars>")  # 1001 in Arabic-Indic digits
    await admin.ask("/user ١٠٠١", "Usage: /user <telegram_id>")  # int() read it as user 1001
    assert await balance_and_ledger_sum(app) == (10, 10)


async def _credit_directly(app: App, telegram_id: int, stars: int) -> None:
    assert app.services is not None
    async with app.services.db.transaction() as session:
        user = await session.scalar(select(User).where(User.telegram_id == telegram_id))
        assert user is not None
        await ledger.credit(session, user.id, stars, "test:fill-up")


async def test_no_grant_takes_a_balance_past_the_cap(make_app: AppFactory, telegram: FakeTelegram) -> None:
    app = await make_app()
    await Chat(telegram).ask("/start", "Your balance: 10 ⭐")
    await _credit_directly(app, USER, MAX_BALANCE - 20)  # 10 stars below the cap
    admin = Chat(telegram, user_id=ADMIN_ID)
    await admin.ask(f"/grant {USER} 11", f"would pass the limit of {MAX_BALANCE} ⭐")
    assert await balance_and_ledger_sum(app) == (MAX_BALANCE - 10,) * 2
    await admin.ask(f"/grant {USER} 10", f"Their balance: {MAX_BALANCE} ⭐")
    assert await balance_and_ledger_sum(app) == (MAX_BALANCE,) * 2


async def test_a_grant_in_a_group_names_the_admin_not_the_group(
    make_app: AppFactory, telegram: FakeTelegram
) -> None:
    app = await make_app()
    await Chat(telegram).ask("/start", "Your balance: 10 ⭐")
    telegram.user_message(Chat(telegram).token, user_id=ADMIN_ID, chat_id=GROUP, text=f"/grant {USER} 5")
    await telegram.wait_for(
        lambda call: (
            call.method == "sendMessage" and call.chat_id == GROUP and "Credited 5 ⭐" in (call.text or "")
        )
    )
    assert app.services is not None
    async with app.services.db.sessions() as session:
        note = await session.scalar(
            select(LedgerEntry.note).where(LedgerEntry.operation_key.like(f"grant:image_bot:{GROUP}:%"))
        )
    assert note == f"by admin {ADMIN_ID}"
