"""The anti-flood window (bot/telegram/flood.py): the sliding count, telling once, bounded memory, and which
updates are never throttled (payments)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, cast

from aiogram import Bot
from aiogram.types import TelegramObject, Update

from bot.telegram.flood import FloodLimiter, FloodMiddleware
from generation.services import Services

USER = (1, 1001)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_limit_holds_in_any_window_and_frees_as_requests_age() -> None:
    clock = Clock()
    limiter = FloodLimiter(3, 10.0, clock=clock)
    for second in (0.0, 1.0, 2.0):
        clock.now = 1000.0 + second
        assert limiter.check(USER).allowed
    clock.now = 1005.0
    refused = limiter.check(USER)
    assert not refused.allowed
    assert refused.retry_after == 5.0  # the first request leaves the window at 1010
    clock.now = 1010.0
    assert limiter.check(USER).allowed  # one slot free again, not three
    assert not limiter.check(USER).allowed
    assert limiter.refused == 2


def test_refused_requests_do_not_extend_the_wait() -> None:
    clock = Clock()
    limiter = FloodLimiter(2, 10.0, clock=clock)
    limiter.check(USER)
    limiter.check(USER)
    for second in range(1, 10):
        clock.now = 1000.0 + second
        assert not limiter.check(USER).allowed
    clock.now = 1010.0
    assert limiter.check(USER).allowed


def test_the_user_is_told_once_per_spell_of_refusals() -> None:
    clock = Clock()
    limiter = FloodLimiter(1, 10.0, clock=clock)
    assert limiter.check(USER).allowed
    verdicts = [limiter.check(USER) for _ in range(5)]
    assert [verdict.tell for verdict in verdicts] == [True, False, False, False, False]
    clock.now = 1010.0
    assert limiter.check(USER).allowed  # a new window...
    assert limiter.check(USER).tell  # ...and a new spell: told again


def test_users_and_bots_are_counted_apart() -> None:
    limiter = FloodLimiter(1, 10.0, clock=Clock())
    assert limiter.check((1, 1001)).allowed
    assert not limiter.check((1, 1001)).allowed
    assert limiter.check((1, 1002)).allowed  # another user
    assert limiter.check((2, 1001)).allowed  # the same user, another bot


def test_an_album_counts_once() -> None:
    limiter = FloodLimiter(2, 10.0, clock=Clock())
    assert all(limiter.check(USER, media_group="album-1").allowed for _ in range(10))
    assert limiter.check(USER).allowed
    assert not limiter.check(USER, media_group="album-2").allowed


def test_idle_users_are_forgotten_and_memory_is_capped() -> None:
    clock = Clock()
    limiter = FloodLimiter(5, 10.0, max_users=100, clock=clock)
    for user in range(50):
        limiter.check((1, user))
    assert len(limiter) == 50
    clock.now += 11  # all idle for a whole window
    limiter.check((1, 999))
    assert len(limiter) == 1
    for user in range(1000):  # many distinct users at once
        limiter.check((2, user))
    assert len(limiter) <= 100


class RecordingBot:
    """Stands in for aiogram's Bot: records what the middleware says."""

    id = 1

    def __init__(self) -> None:
        self.sent: list[tuple[int, str]] = []
        self.answered: list[tuple[str, str | None]] = []

    async def send_message(self, chat_id: int, text: str) -> None:
        self.sent.append((chat_id, text))

    async def answer_callback_query(self, query_id: str, text: str | None = None) -> None:
        self.answered.append((query_id, text))


def _message(update_id: int, **extra: Any) -> Update:
    sender = {"id": 1001, "is_bot": False, "first_name": "T", "language_code": "en"}
    message = {
        "message_id": update_id,
        "date": 0,
        "chat": {"id": 1001, "type": "private"},
        "from": sender,
        **extra,
    }
    return Update.model_validate({"update_id": update_id, "message": message})


async def test_payments_pass_whatever_the_pace_and_the_rest_is_refused() -> None:
    bot = RecordingBot()
    limiter = FloodLimiter(1, 60.0, clock=Clock())
    # No bot name known: the notice's language comes from Telegram's language_code (no database).
    middleware = FloodMiddleware(cast(Services, None), {}, limiter)
    handled: list[int] = []

    async def handler(event: TelegramObject, data: dict[str, Any]) -> None:
        assert isinstance(event, Update)
        handled.append(event.update_id)

    data: dict[str, Any] = {"bot": cast(Bot, bot)}
    run = cast(Callable[[TelegramObject, dict[str, Any]], Awaitable[Any]], handler)
    sender = {"id": 1001, "is_bot": False, "first_name": "T", "language_code": "en"}
    payment = {
        "currency": "XTR",
        "total_amount": 100,
        "invoice_payload": "order",
        "telegram_payment_charge_id": "charge-1",
        "provider_payment_charge_id": "",
    }
    updates = [
        _message(1, text="/start"),
        _message(2, text="/image a cat"),
        _message(3, successful_payment=payment),
        Update.model_validate(
            {
                "update_id": 4,
                "pre_checkout_query": {
                    "id": "q1",
                    "from": sender,
                    "currency": "XTR",
                    "total_amount": 100,
                    "invoice_payload": "order",
                },
            }
        ),
        Update.model_validate(
            {
                "update_id": 5,
                "callback_query": {
                    "id": "c1",
                    "from": sender,
                    "chat_instance": "1",
                    "data": "start:images",
                },
            }
        ),
        _message(6, text="/balance"),
    ]
    for update in updates:
        await middleware(run, update, data)
    assert handled == [1, 3, 4]  # the first request and both payment updates
    assert bot.sent == [
        (1001, "🐢 Slow down a little: that is a lot of requests at once. Try again in 60 seconds.")
    ]
    assert bot.answered == [("c1", None)]  # the button's spinner stopped; the notice not repeated
