"""The figures that compare the plans (generation/plan_figures.py), on SQLite and PostgreSQL, from rows with
known times and outcomes."""

from datetime import UTC, datetime, timedelta

import pytest

from generation.plan_figures import Figures, percentile, plan_figures
from generation.store import Database, Generation, User

NOW = datetime(2025, 6, 15, 12, 0, tzinfo=UTC)
SINCE = NOW - timedelta(hours=24)


async def seed(db: Database, rows: list[tuple[str, str, str, datetime, float | None, str | None]]) -> None:
    """Generations as (plan, kind, status, created at, seconds to finish or None, error)."""
    async with db.transaction() as session:
        user = User(bot_name="main", telegram_id=1, username="alice", language="en", balance=0)
        session.add(user)
        await session.flush()
        for number, (plan, kind, status, created_at, seconds, error) in enumerate(rows):
            session.add(
                Generation(
                    id=f"g{number}",
                    request_key=f"key-{number}",
                    kind=kind,
                    user_id=user.id,
                    bot_name="main",
                    chat_id=1,
                    model="some-model",
                    request={},
                    plan=plan,
                    status=status,
                    error=error,
                    created_at=created_at,
                    finished_at=None if seconds is None else created_at + timedelta(seconds=seconds),
                )
            )


def at(hours_ago: float) -> datetime:
    return NOW - timedelta(hours=hours_ago)


IMAGE, VIDEO = "text_to_image", "text_to_video"
ROWS = [
    # Plan A: five done (1..5 s), two failed (two reasons), one canceled, one queued, one running.
    *[("A", IMAGE, "done", at(1), float(seconds), None) for seconds in (1, 2, 3, 4, 5)],
    ("A", IMAGE, "failed", at(2), None, "PredictionFailed: CUDA out of memory"),
    ("A", VIDEO, "failed", at(2), None, "ProviderTimeout: took too long"),
    ("A", VIDEO, "canceled", at(3), None, "canceled by the user"),
    ("A", IMAGE, "queued", at(0.1), None, None),
    ("A", VIDEO, "running", at(0.2), None, None),
    # Plan B: one done video (20 s), three failed with the same reason.
    ("B", VIDEO, "done", at(5), 20.0, None),
    *[("B", IMAGE, "failed", at(6), None, f"PredictionFailed: NSFW {n}") for n in range(3)],
    # Outside the window: counted by no figure.
    ("A", IMAGE, "done", at(30), 500.0, None),
    ("B", IMAGE, "failed", at(25), None, "OldError: long ago"),
]


async def test_plan_level_figures(db: Database) -> None:
    await seed(db, ROWS)
    plan_a, plan_b = await plan_figures(db, since=SINCE)
    assert plan_a == Figures(
        plan="A",
        kind=None,
        count=10,
        done=5,
        failed=2,
        canceled=1,
        active=2,
        success_rate=5 / 7,
        p50_seconds=pytest.approx(3.0, abs=1e-3),  # type: ignore[arg-type]
        p95_seconds=pytest.approx(4.8, abs=1e-3),  # type: ignore[arg-type]
        failures={"PredictionFailed": 1, "ProviderTimeout": 1},
    )
    assert (plan_b.plan, plan_b.count, plan_b.done, plan_b.failed, plan_b.active) == ("B", 4, 1, 3, 0)
    assert plan_b.success_rate == pytest.approx(0.25)
    assert plan_b.p50_seconds == pytest.approx(20.0, abs=1e-3)
    assert plan_b.p95_seconds == pytest.approx(20.0, abs=1e-3)
    # Errors that differ after the reason still count as one reason.
    assert plan_b.failures == {"PredictionFailed": 3}


async def test_by_kind(db: Database) -> None:
    await seed(db, ROWS)
    figures = {(f.plan, f.kind): f for f in await plan_figures(db, since=SINCE, by_kind=True)}
    assert list(figures) == [("A", IMAGE), ("A", VIDEO), ("B", IMAGE), ("B", VIDEO)]
    a_video = figures[("A", VIDEO)]
    assert (a_video.count, a_video.failed, a_video.canceled, a_video.active) == (3, 1, 1, 1)
    assert a_video.success_rate == 0.0
    assert a_video.p50_seconds is None  # none done: no duration
    assert a_video.failures == {"ProviderTimeout": 1}
    assert figures[("B", VIDEO)].success_rate == 1.0
    assert figures[("B", IMAGE)].failures == {"PredictionFailed": 3}


async def test_both_plans_present_when_empty(db: Database) -> None:
    figures = await plan_figures(db, since=SINCE)
    assert [(f.plan, f.count, f.success_rate, f.p50_seconds, f.failures) for f in figures] == [
        ("A", 0, None, None, {}),
        ("B", 0, None, None, {}),
    ]
    assert await plan_figures(db, since=SINCE, by_kind=True) == []


async def test_default_window_is_the_last_day(db: Database) -> None:
    real_now = datetime.now(UTC)
    await seed(
        db,
        [
            ("B", IMAGE, "done", real_now - timedelta(hours=1), 2.0, None),
            ("B", IMAGE, "done", real_now - timedelta(hours=25), 9.0, None),
        ],
    )
    plan_a, plan_b = await plan_figures(db)
    assert (plan_a.count, plan_b.count, plan_b.p95_seconds) == (0, 1, pytest.approx(2.0, abs=1e-3))


def test_percentile_interpolates_between_ranks() -> None:
    assert percentile([], 50) is None
    assert percentile([7.0], 95) == 7.0
    assert percentile([4.0, 1.0, 3.0, 2.0], 50) == 2.5
    assert percentile([float(n) for n in range(1, 101)], 95) == pytest.approx(95.05)
