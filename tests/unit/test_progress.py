"""The status message's pure parts: the per-chat throttle, the clock it shows, the stage texts; and
the place in line, counted in the database (both databases)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest

from generation.catalog import load_catalog
from generation.delivery import NoDelivery
from generation.progress import STAGE_TEXTS, ChatThrottle, Stage, format_elapsed, place_in_line
from generation.services import Services
from generation.store import Database, Generation, GenerationStatus
from generation.texts import LANGUAGES, count_of, text
from generation.users import ensure_user
from migrations.runner import upgrade
from settings import load_settings

CHAT = ("image_bot", 1001)
OTHER_CHAT = ("image_bot", 1002)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_one_edit_per_interval_per_chat() -> None:
    clock = Clock()
    throttle = ChatThrottle(3.0, clock)
    assert throttle.take(CHAT)
    assert not throttle.ready(CHAT) and not throttle.take(CHAT)
    assert throttle.take(OTHER_CHAT)  # another chat has its own budget
    clock.now += 2.9
    assert not throttle.take(CHAT)
    clock.now += 0.1
    assert throttle.take(CHAT)


def test_each_bot_has_a_budget_of_edits_per_second_over_all_its_chats() -> None:
    clock = Clock()
    throttle = ChatThrottle(3.0, clock, per_bot_per_second=2.0)
    chats = [("image_bot", 2000 + n) for n in range(5)]
    assert [throttle.take(chat) for chat in chats] == [True, True, False, False, False]
    assert not throttle.bot_has_budget("image_bot")
    assert throttle.take(("other_bot", 1)) and throttle.bot_has_budget("other_bot")  # its own budget
    clock.now += 0.5  # one more edit's worth
    assert throttle.take(chats[2]) and not throttle.take(chats[3])
    clock.now += 10.0  # the budget refills to one second's worth, no more
    assert [throttle.take(chat) for chat in chats[3:]] == [True, True]
    assert not throttle.take(("image_bot", 3000))
    assert ChatThrottle(3.0, clock).bot_has_budget("image_bot")  # 0: no bound


def test_a_refused_take_does_not_push_the_next_edit_back() -> None:
    clock = Clock()
    throttle = ChatThrottle(3.0, clock)
    throttle.take(CHAT)
    clock.now += 1.0
    throttle.take(CHAT)  # too early: refused, and it must not restart the interval
    clock.now += 2.0
    assert throttle.take(CHAT)


def test_retry_after_pauses_the_chat_and_is_never_shortened() -> None:
    clock = Clock()
    throttle = ChatThrottle(3.0, clock)
    throttle.hold_off(CHAT, 10.0)  # Telegram's 429 said: retry after 10 s
    clock.now += 3.0
    assert not throttle.take(CHAT)
    throttle.note_sent(CHAT)  # a status that had to go out does not cut the pause short
    clock.now += 6.9
    assert not throttle.ready(CHAT)
    clock.now += 0.1
    assert throttle.take(CHAT)
    assert throttle.ready(OTHER_CHAT)


def test_a_message_sent_regardless_counts_against_the_chat() -> None:
    clock = Clock()
    throttle = ChatThrottle(3.0, clock)
    throttle.note_sent(CHAT)
    assert not throttle.ready(CHAT)
    clock.now += 3.0
    assert throttle.take(CHAT)


def test_no_interval_means_only_retry_after_holds_edits_back() -> None:
    clock = Clock()
    throttle = ChatThrottle(0.0, clock)
    assert throttle.take(CHAT) and throttle.take(CHAT)
    throttle.hold_off(CHAT, 1.0)
    assert not throttle.take(CHAT)


def test_a_pause_holds_everything_back_an_interval_only_edits() -> None:
    clock = Clock()
    throttle = ChatThrottle(3.0, clock)
    throttle.take(CHAT)
    assert not throttle.ready(CHAT) and not throttle.paused(CHAT)  # a new status may still go out
    assert throttle.due_in(CHAT) == 3.0
    throttle.hold_off(CHAT, 5.0)
    assert throttle.paused(CHAT) and throttle.due_in(CHAT) == 5.0
    clock.now += 5.0
    assert throttle.due_in(CHAT) == 0.0 and not throttle.paused(CHAT)


def test_chats_free_again_are_forgotten() -> None:
    clock = Clock()
    throttle = ChatThrottle(1.0, clock)
    throttle.PRUNE_AT = 10
    for chat_id in range(9):
        throttle.take(("image_bot", chat_id))
    throttle.hold_off(CHAT, 60.0)
    clock.now += 2.0
    throttle.take(OTHER_CHAT)  # past 10 chats: those free again go
    assert len(throttle._next_edit) + len(throttle._paused_until) == 2
    assert throttle.paused(CHAT)  # a pause still running is kept


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(0, "0:00"), (7.9, "0:07"), (42, "0:42"), (65, "1:05"), (725, "12:05"), (3723, "1:02:03"), (-1, "0:00")],
)
def test_elapsed_time_is_a_clock(seconds: float, shown: str) -> None:
    assert format_elapsed(seconds) == shown


@pytest.mark.parametrize("language", LANGUAGES)
def test_every_stage_has_a_text_in_both_languages(language: str) -> None:
    for stage, key in STAGE_TEXTS.items():
        shown = text(key, language, elapsed="0:42")
        assert shown and "{" not in shown, stage
    running = count_of(2, "generation", language)
    waiting = text("progress_waiting_own", language, running=running, place=3)
    assert running in waiting and "3" in waiting
    assert "3" in text("progress_waiting_busy", language, place=3)


def test_the_limit_is_told_with_the_right_plural() -> None:
    def own(limit: int) -> str:
        return text("progress_waiting_own", "ru", running=count_of(limit, "generation", "ru"), place=1)

    assert "1 генерация одновременно" in own(1)
    assert "3 генерации одновременно" in own(3)
    assert "5 генераций одновременно" in own(5)
    assert "1 generation at a time" in text(
        "progress_waiting_own", "en", running=count_of(1, "generation", "en"), place=1
    )


def test_the_status_stages_are_all_named() -> None:
    assert set(Stage) - set(STAGE_TEXTS) == {Stage.waiting_slot}  # its text depends on the limit


# --- the place in line, in the database -------------------------------------------------------------


@pytest.fixture
async def services(database_url: str) -> AsyncIterator[Services]:
    await asyncio.to_thread(upgrade, database_url)
    db = Database(database_url)
    settings = load_settings(_env_file=None, database_url=database_url)
    yield Services(
        settings=settings,
        db=db,
        catalog=load_catalog(),
        replicate=cast(Any, None),  # never called: only the database and the catalogue are read
        elevenlabs=cast(Any, None),
        delivery=NoDelivery(),
        fetcher=cast(Any, None),
    )
    await db.close()


async def add(
    services: Services,
    generation_id: str,
    user_id: int,
    *,
    at: int,
    status: GenerationStatus = GenerationStatus.queued,
    plan: str = "A",
    model: str = "flux-schnell",
) -> Generation:
    async with services.db.transaction() as session:
        generation = Generation(
            id=generation_id,
            request_key=f"key-{generation_id}",
            kind="text_to_image",
            user_id=user_id,
            bot_name="image_bot",
            chat_id=1001,
            model=model,
            request={},
            plan=plan,
            status=status,
            created_at=datetime(2025, 1, 1, tzinfo=UTC) + timedelta(seconds=at),
        )
        session.add(generation)
    return generation


async def test_the_place_in_line_counts_who_waits_for_the_same_limit_before_it(services: Services) -> None:
    async with services.db.transaction() as session:
        first, _ = await ensure_user(session, "image_bot", 1, username=None, language="en")
        second, _ = await ensure_user(session, "image_bot", 2, username=None, language="en")
    replicate_model = next(
        model.id for model in services.catalog.models.values() if model.provider == "replicate"
    )
    speech = next(model.id for model in services.catalog.models.values() if model.provider == "elevenlabs")
    await add(services, "a-running", first.id, at=0, status=GenerationStatus.running)  # holds the slot
    await add(services, "b-waiting", first.id, at=1)
    await add(services, "c-same-second", first.id, at=1)  # a tie on time: the id decides
    await add(services, "d-plan-b", first.id, at=1, plan="B")  # the other plan has its own limiter
    await add(services, "e-done", first.id, at=1, status=GenerationStatus.done)
    await add(services, "f-other-user", second.id, at=1, model=replicate_model)
    await add(services, "g-other-provider", second.id, at=1, model=speech)
    me = await add(services, "z-me", first.id, at=2)
    later = await add(services, "y-later", first.id, at=3)

    assert await place_in_line(services, me, f"user:{first.id}") == 3  # b, c
    assert await place_in_line(services, later, f"user:{first.id}") == 4  # b, c, me
    assert await place_in_line(services, me, "provider:replicate") == 4  # b, c, f
    assert await place_in_line(services, me, "rate:replicate") == 4
    assert await place_in_line(services, me, "global") == 5  # b, c, f, g
    async with services.db.sessions() as session:
        tied = await session.get(Generation, "c-same-second")
    assert tied is not None
    assert await place_in_line(services, tied, f"user:{first.id}") == 2  # b came first on the tie
