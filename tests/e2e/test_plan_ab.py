"""The A/B test of the plans end to end: `/ab 30` sends about 30 % of new generations (by the rule of
generation/plan.py) to Plan B while Plan A is available, `/ab` and `/plan` compare the plans, the share
survives a restart, and bad values or non-admins change nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from app import App
from generation.plan import share_bucket
from tests.conftest import ADMIN_ID, API_TOKEN, AppFactory
from tests.e2e.helpers import Chat, all_settled
from tests.fakes.telegram import FakeTelegram

AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
GENERATIONS = 100
FIRST_USER = 50_000


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def post_image(http: aiohttp.ClientSession, app: App, user: int) -> dict[str, Any]:
    """One cheap image through the HTTP API, for a user of its own (no per-user limit is in the way)."""
    body = {"telegram_id": user, "is_ru": False, "bot_name": "image_bot", "prompt": f"fox {user}"}
    async with http.post(
        f"http://127.0.0.1:{app.http_port}/api/generation/text-to-image", json=body, headers=AUTH
    ) as response:
        assert response.status == 202, await response.text()
        answer: dict[str, Any] = await response.json()
        return answer


def expected_plan(generation_id: str, share: int) -> str:
    return "B" if share_bucket(generation_id) < share else "A"


def plan_line(answer: str, plan: str) -> str:
    [line] = [line for line in answer.splitlines() if line.startswith(f"{plan}: ")]
    return line


async def test_a_share_of_30_percent_sends_about_30_of_100_generations_to_plan_b(
    make_app: AppFactory, telegram: FakeTelegram, redis_url: str, http: aiohttp.ClientSession
) -> None:
    app = await make_app(redis_url=redis_url)
    admin = Chat(telegram, user_id=ADMIN_ID)
    await admin.ask("/ab 30", "A/B share set to 30 %")

    answers = [await post_image(http, app, FIRST_USER + number) for number in range(GENERATIONS)]
    for answer in answers:
        assert answer["plan"] == expected_plan(answer["id"], 30), answer
    on_plan_b = sum(answer["plan"] == "B" for answer in answers)
    assert 15 <= on_plan_b <= 45

    settled = await all_settled(app, GENERATIONS, timeout=60)
    # Each ran where it was sent (no enqueue failed over to Plan B) and finished.
    assert {g.id: g.plan for g in settled} == {answer["id"]: answer["plan"] for answer in answers}
    assert {g.status for g in settled} == {"done"}

    shown = (await admin.ask("/ab", "A/B share: 30 %")).text or ""
    assert "(set by /ab)" in shown
    assert "Plan A vs Plan B, last 24 h" in shown
    a, b = plan_line(shown, "A"), plan_line(shown, "B")
    assert a.startswith(f"A: {GENERATIONS - on_plan_b} generations; done {GENERATIONS - on_plan_b}, failed 0")
    assert b.startswith(f"B: {on_plan_b} generations; done {on_plan_b}, failed 0")
    for line in (a, b):
        assert "success 100.0 %" in line and "n/a" not in line  # percentiles of done ones: seconds
        assert " s, p95 " in line and line.endswith(" s")

    status = (await admin.ask("/plan", "Plan in force: A")).text or ""
    assert "A/B share: 30 %" in status
    assert plan_line(status, "A") == a and plan_line(status, "B") == b


async def test_the_share_survives_a_restart(
    make_app: AppFactory,
    telegram: FakeTelegram,
    redis_url: str,
    database_url: str,
    http: aiohttp.ClientSession,
) -> None:
    first = await make_app(redis_url=redis_url, database_url=database_url)
    admin = Chat(telegram, user_id=ADMIN_ID)
    await admin.ask("/ab 100", "A/B share set to 100 %")
    await first.stop()

    second = await make_app(redis_url=redis_url, database_url=database_url)
    assert second.generations is not None
    assert await second.generations.plan_b_share() == (100, "/ab")
    answer = await post_image(http, second, FIRST_USER)
    assert answer["plan"] == "B"  # all of them, though Plan A is available
    await admin.ask("/ab", "A/B share: 100 % of new generations go to Plan B in auto mode (set by /ab)")


async def test_a_share_set_meanwhile_decides_a_known_users_next_generation(
    make_app: AppFactory,
    telegram: FakeTelegram,
    redis_url: str,
    database_url: str,
    http: aiohttp.ClientSession,
) -> None:
    """On PostgreSQL a known user's generation is recorded in one statement, its plan chosen by the
    flags the previous record saw: one set since by `/ab` still decides it (the statement finds them
    changed and the plan is chosen again)."""
    app = await make_app(redis_url=redis_url, database_url=database_url)
    assert [(await post_image(http, app, FIRST_USER))["plan"] for _ in range(2)] == ["A", "A"]
    admin = Chat(telegram, user_id=ADMIN_ID)
    await admin.ask("/ab 100", "A/B share set to 100 %")
    assert [(await post_image(http, app, FIRST_USER))["plan"] for _ in range(2)] == ["B", "B"]
    await admin.ask("/ab 0", "A/B share set to 0 %")
    assert (await post_image(http, app, FIRST_USER))["plan"] == "A"
    await all_settled(app, 5, timeout=60)


async def test_bad_shares_are_refused_in_the_admins_language(
    make_app: AppFactory, telegram: FakeTelegram
) -> None:
    app = await make_app(plan_b_share=20)
    assert app.generations is not None
    admin = Chat(telegram, user_id=ADMIN_ID, language="ru")
    await admin.ask("/ab 150", "Доля — целое число процентов от 0 до 100")
    admin.send("/ab x")
    await telegram.wait_for(lambda _call: sum("Доля — целое" in text for text in admin.texts()) >= 2)
    assert await app.generations.plan_b_share() == (20, "env")  # the environment's, unchanged
    shown = (await admin.ask("/ab", "A/B-доля: 20 %")).text or ""
    # Without Redis the share cannot act (the answer says so), and no generation is recorded: both
    # plans show zeros.
    assert "(задана через env)" in shown and "План A здесь не подключён" in shown
    assert "A: 0 генераций; готово 0" in shown and "B: 0 генераций; готово 0" in shown
    assert "успешно н/д; p50 н/д, p95 н/д" in shown


async def test_a_non_admin_gets_no_answer_and_changes_nothing(
    make_app: AppFactory, telegram: FakeTelegram
) -> None:
    app = await make_app()
    assert app.generations is not None
    user = Chat(telegram)
    user.send("/ab 50")
    await user.ask("/ab", "I don't know this command")
    await telegram.wait_for(lambda _call: sum("I don't know" in text for text in user.texts()) >= 2)
    assert not any("A/B" in text or "Plan A" in text for text in user.texts())
    assert await app.generations.plan_b_share() == (0, "env")
