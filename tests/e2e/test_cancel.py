"""Cancellation: /cancel and the Cancel button stop the generation and refund it exactly once."""

from __future__ import annotations

import asyncio

from tests.conftest import AppFactory
from tests.e2e.helpers import Chat, all_settled, balance_and_ledger_sum, generations_of
from tests.fakes.replicate import FakeReplicate, Outcome
from tests.fakes.telegram import FakeTelegram

FLUX = "black-forest-labs/flux-schnell"


async def test_the_cancel_button_stops_a_plan_b_generation_and_refunds_it(
    make_app: AppFactory, telegram: FakeTelegram, replicate: FakeReplicate
) -> None:
    app = await make_app()
    hold = asyncio.Event()
    replicate.script(FLUX, Outcome(hold=hold))
    chat = Chat(telegram)
    chat.send("/image 3 never mind")
    status = await chat.reply("Working on it")
    await replicate.wait_for_create(1)
    [row] = status.params["reply_markup"]["inline_keyboard"]
    telegram.press_button(
        chat.token, user_id=chat.user_id, message=status.result, data=row[0]["callback_data"]
    )
    await chat.reply("Canceled. 3 ⭐ returned. Balance: 10 ⭐", method="editMessageText")
    [generation] = await all_settled(app, 1)
    assert (generation.status, generation.refunded) == ("canceled", 3)
    assert replicate.cancels == [replicate.creates[0]["id"]]  # stopped at the provider too
    hold.set()
    assert chat.albums() == []
    assert not any("Charged" in text for text in chat.texts())
    assert await balance_and_ledger_sum(app) == (10, 10)


async def test_cancel_command_on_plan_a_refunds_once_even_when_repeated(
    make_app: AppFactory, telegram: FakeTelegram, replicate: FakeReplicate, database_url: str, redis_url: str
) -> None:
    app = await make_app(
        database_url=database_url, redis_url=redis_url, job_wait_budget=0.2, long_wait_poll=0.3
    )
    hold = asyncio.Event()
    replicate.script(FLUX, Outcome(hold=hold))
    chat = Chat(telegram)
    chat.send("/image 2 changed my mind")
    await replicate.wait_for_create(1)
    chat.send("/cancel")
    chat.send("/cancel")  # a second /cancel finds nothing running
    await chat.reply("Canceled. 2 ⭐ returned. Balance: 10 ⭐")
    await chat.reply("Nothing is running now.")
    hold.set()
    [generation] = await all_settled(app, 1)
    assert (generation.plan, generation.status, generation.refunded) == ("A", "canceled", 2)
    assert chat.albums() == []
    assert await balance_and_ledger_sum(app) == (10, 10)


async def test_cancel_after_the_result_changes_nothing(
    make_app: AppFactory, telegram: FakeTelegram, replicate: FakeReplicate
) -> None:
    app = await make_app()
    chat = Chat(telegram)
    chat.send("/image quick")
    await chat.reply("Charged 1 ⭐. Balance: 9 ⭐")
    await all_settled(app, 1)
    await chat.ask("/cancel", "Nothing is running now.")
    assert await balance_and_ledger_sum(app) == (9, 9)


async def test_cancel_racing_the_button_refunds_once(
    make_app: AppFactory, telegram: FakeTelegram, replicate: FakeReplicate, database_url: str
) -> None:
    app = await make_app(database_url=database_url)
    hold = asyncio.Event()
    replicate.script(FLUX, Outcome(hold=hold))
    chat = Chat(telegram)
    chat.send("/image 4 race")
    status = await chat.reply("Working on it")
    await replicate.wait_for_create(1)
    assert app.generations is not None
    [generation] = await generations_of(app)
    outcomes = await asyncio.gather(*(app.generations.cancel(generation.id) for _ in range(5)))
    assert sum(outcome is not None for outcome in outcomes) == 1
    telegram.press_button(
        chat.token,
        user_id=chat.user_id,
        message=status.result,
        data=status.params["reply_markup"]["inline_keyboard"][0][0]["callback_data"],
    )
    await telegram.wait_for(lambda call: call.method == "answerCallbackQuery")
    hold.set()
    assert await balance_and_ledger_sum(app) == (10, 10)
