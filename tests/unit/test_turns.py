"""Telegram updates handled a few at a time, payments first, no turn held for long (bot/telegram/turns.py):
through aiogram's own dispatching, with handlers that wait until the test lets them go."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

from aiogram import Bot, Router
from aiogram.types import Update

from bot.telegram.turns import Turns, TurnTakingDispatcher

BOT = Bot("42:TEST")  # never asked anything: the handlers here call no Telegram method

SENDER = {"id": 1001, "is_bot": False, "first_name": "T", "language_code": "en"}
PAYMENT = {
    "currency": "XTR",
    "total_amount": 100,
    "invoice_payload": "order",
    "telegram_payment_charge_id": "charge-1",
    "provider_payment_charge_id": "",
}


def _message(update_id: int, **extra: Any) -> Update:
    message = {"message_id": update_id, "date": 0, "chat": {"id": 1001, "type": "private"}, "from": SENDER}
    return Update.model_validate({"update_id": update_id, "message": {**message, **extra}})


def _pre_checkout(update_id: int) -> Update:
    query = {"id": f"q{update_id}", "from": SENDER, "currency": "XTR", "total_amount": 100}
    query["invoice_payload"] = "order"
    return Update.model_validate({"update_id": update_id, "pre_checkout_query": query})


class Handlers:
    """Handlers that each wait for their release; what ran, and the most that ran at once."""

    def __init__(self, turns: Turns) -> None:
        self.started: list[int] = []
        self.running = 0
        self.most = 0
        self.release: dict[int, asyncio.Event] = {}
        self.failing: set[int] = set()  # updates whose handler raises
        self.dispatcher = TurnTakingDispatcher(turns=turns)
        router = Router()
        router.message()(self.handle)
        router.pre_checkout_query()(self.handle)
        self.dispatcher.include_router(router)

    async def handle(self, _event: object, event_update: Update) -> None:
        self.started.append(event_update.update_id)
        if event_update.update_id in self.failing:
            raise RuntimeError("a handler's bug")
        self.running += 1
        self.most = max(self.most, self.running)
        try:
            await self.release.setdefault(event_update.update_id, asyncio.Event()).wait()
        finally:
            self.running -= 1

    def feed(self, update: Update) -> Coroutine[Any, Any, Any]:
        return self.dispatcher.feed_update(BOT, update)

    def let_go(self, update_id: int) -> None:
        self.release.setdefault(update_id, asyncio.Event()).set()


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_updates_are_handled_a_few_at_a_time_in_their_order_and_all_are_handled() -> None:
    turns = Turns(2, longest=60.0)
    handlers = Handlers(turns)
    tasks = [asyncio.create_task(handlers.feed(_message(number))) for number in range(6)]
    await _settle()
    assert handlers.started == [0, 1] and turns.places.waiting == 4

    for number in range(6):
        handlers.let_go(number)
        await _settle()
    await asyncio.wait_for(asyncio.gather(*tasks), 5)
    assert handlers.started == list(range(6)) and handlers.most == 2
    assert (turns.places.taken, turns.places.waiting) == (0, 0)


async def test_payments_take_the_next_turn_before_updates_that_came_earlier() -> None:
    turns = Turns(1, longest=60.0)
    handlers = Handlers(turns)
    holder = asyncio.create_task(handlers.feed(_message(1, text="/image a cat")))
    await _settle()
    later = [
        _message(2, text="/balance"),
        _pre_checkout(3),
        _message(4, text="/help"),
        _message(5, successful_payment=PAYMENT),
    ]
    tasks = [asyncio.create_task(handlers.feed(update)) for update in later]
    await _settle()
    for number in (1, 3, 5, 2, 4):
        handlers.let_go(number)
        await _settle()
    await asyncio.wait_for(asyncio.gather(holder, *tasks), 5)
    assert handlers.started == [1, 3, 5, 2, 4]


async def test_a_turn_held_too_long_passes_on_while_its_holder_goes_on() -> None:
    turns = Turns(1, longest=0.05)
    handlers = Handlers(turns)
    slow = asyncio.create_task(handlers.feed(_message(1)))
    await _settle()
    handlers.let_go(2)
    # The slow one still waits; the next gets its turn when the slow one's runs out.
    await asyncio.wait_for(handlers.feed(_message(2)), 5)
    assert not slow.done() and handlers.running == 1
    assert (turns.places.taken, turns.places.waiting) == (0, 0)  # the slow one holds none now

    handlers.let_go(1)
    await slow
    assert (turns.places.taken, turns.places.waiting) == (0, 0)  # and gives none back twice


async def test_a_turn_is_given_back_when_its_update_fails_or_is_cancelled() -> None:
    turns = Turns(1, longest=60.0)
    handlers = Handlers(turns)
    handlers.failing.add(1)
    try:
        await handlers.feed(_pre_checkout(1))
    except RuntimeError:
        pass
    else:
        raise AssertionError("the handler's error was not raised")
    assert turns.places.taken == 0

    cancelled = asyncio.create_task(handlers.feed(_message(2)))
    await _settle()
    assert turns.places.taken == 1 and handlers.started == [1, 2]
    cancelled.cancel()
    await asyncio.gather(cancelled, return_exceptions=True)
    assert turns.places.taken == 0
