"""While it works: the status message is edited as the generation moves (waiting for a slot with its
place in line, working, rendering with the time elapsed, sending), never more than once per interval
per chat, pausing on Telegram's flood control, and removed when the result is sent. Through the fake
Bot API, the real aiogram and replicate SDKs, both plans."""

from __future__ import annotations

import asyncio
import itertools
import re
import time
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import select

from app import App
from generation.store import LedgerEntry
from tests.conftest import AppFactory
from tests.e2e.helpers import USER, Chat, all_settled, balance_and_ledger_sum
from tests.fakes.replicate import FakeReplicate, Outcome
from tests.fakes.telegram import Call, FakeTelegram

KLING = "kwaivgi/kling-v1.6-standard"
FLUX = "black-forest-labs/flux-schnell"
BONUS = 100  # a video costs 30 stars
INTERVAL = 0.3  # progress_edit_interval in these tests
# Arrival times at the fake are measured after the app decided to edit: allow a little jitter.
JITTER = 0.05
RENDERING = re.compile(r"Generating… (\d+):(\d\d) elapsed")
WAITING = "Waiting for a free slot"


@pytest.fixture
def arrivals(telegram: FakeTelegram, monkeypatch: pytest.MonkeyPatch) -> dict[int, float]:
    """When each Telegram call reached the fake (by the Call's id), for the spacing checks."""
    times: dict[int, float] = {}
    record = telegram._record

    def stamped(call: Call) -> None:
        times[id(call)] = time.monotonic()
        record(call)

    monkeypatch.setattr(telegram, "_record", stamped)
    return times


def edits_of(telegram: FakeTelegram, message_id: int | None = None, *, failed: bool = False) -> list[Call]:
    """editMessageText calls to the user's chat (of one message), in order."""
    return [
        call
        for call in telegram.sent(
            Chat(telegram).token, chat_id=USER, methods=["editMessageText"], include_failed=failed
        )
        if message_id is None or call.params["message_id"] == message_id
    ]


def status_of(call: Call) -> int:
    return int(call.result["message_id"])


async def edit_where(telegram: FakeTelegram, message_id: int, predicate: Callable[[str], bool]) -> Call:
    return await telegram.wait_for(
        lambda call: (
            call.method == "editMessageText"
            and call.ok
            and call.params.get("message_id") == message_id
            and predicate(call.text or "")
        ),
        timeout=15,
    )


async def removed(telegram: FakeTelegram, message_id: int) -> Call:
    return await telegram.wait_for(
        lambda call: call.method == "deleteMessage" and call.params.get("message_id") == message_id,
        timeout=15,
    )


def assert_spaced(calls: list[Call], arrivals: dict[int, float], interval: float) -> None:
    times = sorted(arrivals[id(call)] for call in calls)
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    assert all(gap >= interval - JITTER for gap in gaps), gaps


def assert_cancel_button_kept(calls: list[Call]) -> None:
    """Every status keeps its Cancel button until the result is being sent, which takes it away (a
    cancellation can no longer win then)."""
    for call in calls:
        if "sending the result" in (call.text or ""):
            assert "reply_markup" not in call.params
            continue
        [[button]] = call.params["reply_markup"]["inline_keyboard"]
        assert button["callback_data"].startswith("cancel:")


def elapsed_seconds(shown: str) -> int:
    match = RENDERING.search(shown)
    assert match is not None, shown
    return int(match.group(1)) * 60 + int(match.group(2))


async def charged_once(app: App, price: int) -> None:
    [generation] = await all_settled(app, 1)
    assert (generation.status, generation.refunded) == ("done", 0)
    assert app.services is not None
    async with app.services.db.sessions() as session:
        keys = list(
            await session.scalars(
                select(LedgerEntry.operation_key).where(LedgerEntry.generation_id == generation.id)
            )
        )
    assert keys == [f"charge:{generation.id}"]
    assert await balance_and_ledger_sum(app) == (BONUS - price, BONUS - price)


async def test_a_slow_video_shows_its_stages_in_order_then_the_status_is_removed(
    make_app: AppFactory, telegram: FakeTelegram, replicate: FakeReplicate, arrivals: dict[int, float]
) -> None:
    # Polls a little slower than the edit interval, so the last stage's edit is due when it comes
    # (a stage asked for within the interval is skipped, by design).
    app = await make_app(new_user_bonus=BONUS, progress_edit_interval=INTERVAL, replicate_poll_interval=0.35)
    replicate.script(KLING, Outcome(output=replicate.output_url(0, ext="mp4"), polls=6))
    chat = Chat(telegram)
    chat.send("/video a snail crossing a very long road")
    status = await chat.reply("Working on it")
    await chat.reply("Charged 30 ⭐. Balance: 70 ⭐")
    await removed(telegram, status_of(status))

    edits = edits_of(telegram, status_of(status))
    shown = [call.text or "" for call in edits]
    rendering = [text for text in shown if RENDERING.search(text)]
    assert len(rendering) >= 2  # the clock moved on while the provider worked
    seconds = [elapsed_seconds(text) for text in rendering]
    assert seconds == sorted(seconds) and seconds[0] < seconds[-1]
    assert "sending the result" in shown[-1]
    assert all(RENDERING.search(text) for text in shown[:-1])  # working -> rendering... -> sending
    assert_cancel_button_kept(edits)
    assert_spaced(edits, arrivals, INTERVAL)
    await charged_once(app, 30)


async def test_two_generations_in_one_chat_share_its_edit_budget(
    make_app: AppFactory,
    telegram: FakeTelegram,
    replicate: FakeReplicate,
    redis_url: str,
    arrivals: dict[int, float],
) -> None:
    """Plan A, polling fast: each status wants an edit every second (its clock), and the chat's
    throttle spaces all of them, whichever message they are for."""
    await make_app(
        redis_url=redis_url,
        new_user_bonus=BONUS,
        progress_edit_interval=INTERVAL,
        replicate_poll_interval=0.02,
    )
    hold = asyncio.Event()
    replicate.script(KLING, Outcome(hold=hold), Outcome(hold=hold))
    chat = Chat(telegram)
    chat.send("/video the first slow one")
    chat.send("/video the second slow one")
    await replicate.wait_for_create(2)
    statuses = [await chat.reply("Working on it")]
    statuses.append(
        await telegram.wait_for(
            lambda call: (
                call.method == "sendMessage"
                and "Working on it" in (call.text or "")
                and call is not statuses[0]
            )
        )
    )
    for status in statuses:  # both show their clock past the first second
        await edit_where(telegram, status_of(status), lambda text: RENDERING.search(text) is not None)
        await edit_where(telegram, status_of(status), lambda text: "0:01 elapsed" in text)
    hold.set()
    for status in statuses:
        await removed(telegram, status_of(status))
    edits = edits_of(telegram)
    assert {call.params["message_id"] for call in edits} == {status_of(status) for status in statuses}
    assert_cancel_button_kept(edits)
    assert_spaced(edits, arrivals, INTERVAL)
    assert sum("Charged 30 ⭐" in text for text in chat.texts()) == 2


async def test_flood_control_on_an_edit_pauses_the_chats_edits_and_nothing_else(
    make_app: AppFactory, telegram: FakeTelegram, replicate: FakeReplicate, arrivals: dict[int, float]
) -> None:
    app = await make_app(new_user_bonus=BONUS, progress_edit_interval=INTERVAL, replicate_poll_interval=0.02)
    hold = asyncio.Event()
    replicate.script(KLING, Outcome(output=replicate.output_url(0, ext="mp4"), hold=hold))
    telegram.fail_next(
        "editMessageText", error_code=429, description="Too Many Requests: retry after 1", retry_after=1
    )
    chat = Chat(telegram)
    chat.send("/video a traffic jam")
    status = await chat.reply("Working on it")
    flooded = await telegram.wait_for(lambda call: call.method == "editMessageText" and not call.ok)
    after = await edit_where(telegram, status_of(status), lambda text: RENDERING.search(text) is not None)
    assert arrivals[id(after)] - arrivals[id(flooded)] >= 1.0 - JITTER  # Telegram's retry_after
    assert [call for call in edits_of(telegram, failed=True) if call is not flooded] == edits_of(telegram)
    hold.set()
    await chat.reply("Charged 30 ⭐. Balance: 70 ⭐")
    await removed(telegram, status_of(status))
    await charged_once(app, 30)
    assert replicate.create_count(KLING) == 1


@pytest.mark.parametrize("plan", ["A", "B"])
async def test_a_generation_over_the_per_user_limit_says_it_waits_and_its_place_in_line(
    make_app: AppFactory,
    telegram: FakeTelegram,
    replicate: FakeReplicate,
    database_url: str,
    redis_url: str,
    plan: str,
) -> None:
    overrides: dict[str, Any] = {"redis_url": redis_url} if plan == "A" else {}  # no Redis: Plan B
    app = await make_app(
        database_url=database_url, limit_per_user=1, progress_edit_interval=INTERVAL, **overrides
    )
    hold = asyncio.Event()
    replicate.script(FLUX, Outcome(hold=hold))  # the second one finishes at once, in its turn
    chat = Chat(telegram)
    chat.send("/image the first")
    await replicate.wait_for_create(1)
    chat.send("/image the second")
    waiting = await chat.reply(WAITING)
    assert "limit: 1 generation at a time" in (waiting.text or "")
    assert "Place in line: 1" in (waiting.text or "")
    assert_cancel_button_kept([waiting])
    assert replicate.create_count() == 1  # it really waits
    hold.set()
    await telegram.wait_for(lambda _: sum("Charged 1 ⭐" in text for text in chat.texts()) == 2, timeout=20)
    await removed(telegram, status_of(waiting))  # the same status message, from waiting to removed
    generations = await all_settled(app, 2)
    assert [(g.plan, g.status, g.failures) for g in generations] == [(plan, "done", 0)] * 2
    assert await balance_and_ledger_sum(app) == (8, 8)


async def test_a_waiting_generation_is_told_in_russian_too(
    make_app: AppFactory, telegram: FakeTelegram, replicate: FakeReplicate
) -> None:
    await make_app(limit_per_user=1, progress_edit_interval=INTERVAL)
    hold = asyncio.Event()
    replicate.script(FLUX, Outcome(hold=hold))
    chat = Chat(telegram, language="ru")
    chat.send("/image первая")
    await replicate.wait_for_create(1)
    chat.send("/image вторая")
    waiting = await chat.reply("Ждём свободного места")
    assert "лимит: 1 генерация одновременно" in (waiting.text or "")
    assert "Место в очереди: 1" in (waiting.text or "")
    hold.set()
    await removed(telegram, status_of(waiting))
