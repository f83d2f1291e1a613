"""The admin figures (/stats) and one user's account (/user), on SQLite and PostgreSQL, from rows with
known times: today, earlier this week, and older than 7 days."""

from datetime import UTC, datetime, timedelta

from bot.telegram.routers.admin import MESSAGE_LIMIT, fit, render_account, render_stats
from generation import stats
from generation.store import Database, Generation, LedgerEntry, Order, User

NOW = datetime(2025, 6, 15, 12, 0, tzinfo=UTC)
TODAY = datetime(2025, 6, 15, 8, 0, tzinfo=UTC)


def day(day: int, hour: int = 12) -> datetime:
    return datetime(2025, 6, day, hour, 0, tzinfo=UTC)


async def seed(db: Database) -> dict[int, int]:
    """Three users of "main" (new today, new this week, old) and one of "other", with their ledger,
    generations and orders. Answers the user ids by telegram id."""
    async with db.transaction() as session:
        users = {
            1: User(bot_name="main", telegram_id=1, username="alice", language="en", balance=103),
            2: User(bot_name="main", telegram_id=2, username=None, language="ru", balance=0),
            3: User(bot_name="main", telegram_id=3, username="carol", language="en", balance=0),
            4: User(bot_name="other", telegram_id=4, username="dave", language="en", balance=0),
        }
        users[1].created_at = TODAY
        users[2].created_at = day(12)
        users[3].created_at = day(1)
        users[4].created_at = TODAY
        session.add_all(users.values())
        await session.flush()
        ids = {telegram_id: user.id for telegram_id, user in users.items()}

        def entry(
            user: int, key: str, amount: int, balance: int, at: datetime, note: str | None = None
        ) -> None:
            session.add(
                LedgerEntry(
                    user_id=ids[user],
                    operation_key=key,
                    amount=amount,
                    balance_after=balance,
                    note=note,
                    created_at=at,
                )
            )

        entry(1, "grant:welcome:1", 10, 10, day(15, 8), note="welcome bonus")
        entry(1, "charge:g1", -3, 7, day(15, 10))
        entry(1, "charge:g2", -4, 3, day(15, 11))
        entry(1, "refund:g2", 4, 7, day(15, 11))
        entry(1, "payment:ch1", 100, 107, day(15, 11))
        entry(1, "charge:g6", -4, 103, day(15, 11))
        entry(2, "payment:ch2", 500, 500, day(11))
        entry(2, "charge:g3", -5, 495, day(12))
        entry(2, "refund:g3", 2, 497, day(12))
        entry(2, "payment_refund:ch2", -497, 0, day(13))  # a Stars refund: neither a charge nor a refund
        entry(3, "charge:g4", -7, 0, day(1))  # older than 7 days
        entry(4, "charge:g5", -6, 0, day(15, 9))

        def generation(
            gid: str,
            user: int,
            kind: str,
            plan: str,
            status: str,
            at: datetime,
            *,
            price: int = 0,
            refunded: int = 0,
            error: str | None = None,
        ) -> None:
            session.add(
                Generation(
                    id=gid,
                    request_key=f"key-{gid}",
                    kind=kind,
                    user_id=ids[user],
                    bot_name="other" if user == 4 else "main",
                    chat_id=user,
                    model="flux-schnell" if kind == "text_to_image" else "some-model",
                    request={},
                    plan=plan,
                    status=status,
                    price=price,
                    refunded=refunded,
                    error=error,
                    created_at=at,
                )
            )

        generation("g1", 1, "text_to_image", "A", "done", day(15, 10), price=3)
        generation(
            "g2", 1, "text_to_video", "B", "failed", day(15, 11), price=4, refunded=4,
            error="PredictionFailed: CUDA out of memory",
        )  # fmt: skip
        generation(
            "g6", 1, "text_to_image", "A", "failed", day(15, 11), price=4,
            error="internal error (KeyError)",
        )  # fmt: skip
        generation(
            "g3", 2, "text_to_image", "B", "failed", day(12), price=5, refunded=2,
            error="PredictionFailed: NSFW content detected",
        )  # fmt: skip
        generation("g7", 2, "text_to_speech", "A", "failed", day(10), error="ProviderTimeout: took too long")
        generation("g8", 2, "text_to_image", "A", "canceled", day(14), error="canceled by the user")
        generation("g4", 3, "text_to_image", "A", "failed", day(1), price=7, error="PredictionFailed: old")
        generation("g5", 4, "text_to_image", "A", "done", day(15, 9), price=6)

        def order(
            oid: str,
            user: int,
            status: str,
            amount: int,
            stars: int,
            created: datetime,
            *,
            paid: datetime | None = None,
            refunded: datetime | None = None,
            refunded_stars: int = 0,
        ) -> None:
            session.add(
                Order(
                    id=oid,
                    user_id=ids[user],
                    bot_name="other" if user == 4 else "main",
                    telegram_id=user,
                    package=f"stars_{stars}",
                    stars=stars,
                    amount=amount,
                    status=status,
                    charge_id=f"charge-{oid}" if paid else None,
                    refunded_stars=refunded_stars,
                    created_at=created,
                    paid_at=paid,
                    refunded_at=refunded,
                )
            )

        order("o1aaaaaaaaaaaaaa", 1, "paid", 50, 100, day(15, 9), paid=day(15, 9))
        order("o6aaaaaaaaaaaaaa", 1, "refunding", 50, 100, day(15, 10), paid=day(15, 10))
        order("o4aaaaaaaaaaaaaa", 1, "pending", 50, 100, day(15, 11))
        order(
            "o2aaaaaaaaaaaaaa", 2, "refunded", 250, 500, day(11), paid=day(11), refunded=day(13),
            refunded_stars=497,
        )  # fmt: skip
        order("o3aaaaaaaaaaaaaa", 2, "paid", 50, 100, day(10), paid=day(10))
        order("o5aaaaaaaaaaaaaa", 3, "paid", 500, 1000, day(1), paid=day(1))  # older than 7 days
        order("o7aaaaaaaaaaaaaa", 4, "paid", 250, 500, day(15, 9), paid=day(15, 9))
    return ids


def pairs(figures: dict[str, stats.Pair]) -> dict[str, tuple[int, int]]:
    return {name: (pair.today, pair.week) for name, pair in figures.items()}


def as_tuple(pair: stats.Pair) -> tuple[int, int]:
    return pair.today, pair.week


async def test_figures_of_one_bot_today_and_over_7_days(db: Database) -> None:
    await seed(db)
    figures = await stats.collect(db, "main", NOW)
    assert figures.bounds.day_start == datetime(2025, 6, 15, tzinfo=UTC)
    assert figures.bounds.week_start == datetime(2025, 6, 9, tzinfo=UTC)
    assert (figures.users_total, as_tuple(figures.new_users)) == (3, (1, 2))
    assert as_tuple(figures.generations) == (3, 6)
    assert pairs(figures.by_kind) == {
        "text_to_image": (2, 4),
        "text_to_speech": (0, 1),
        "text_to_video": (1, 1),
    }
    assert pairs(figures.by_plan) == {"A": (2, 4), "B": (1, 2)}
    assert list(figures.by_status) == ["done", "failed", "canceled"]
    assert pairs(figures.by_status) == {"done": (1, 1), "failed": (2, 4), "canceled": (0, 1)}
    # Charges 3 + 4 + 4 today, + 5 this week; refunds 4 today, + 2 this week; payments are neither.
    assert as_tuple(figures.charged) == (11, 16)
    assert as_tuple(figures.refunded) == (4, 6)
    assert as_tuple(figures.charged_net) == (7, 10)
    # Paid (and refunding) orders by payment time; refunded ones by refund time; pending not at all.
    assert as_tuple(figures.paid.count) == (2, 3)
    assert as_tuple(figures.paid.amount) == (100, 150)
    assert as_tuple(figures.paid.stars) == (200, 300)
    assert as_tuple(figures.refunded_payments.count) == (0, 1)
    assert as_tuple(figures.refunded_payments.amount) == (0, 250)
    assert as_tuple(figures.refunded_payments.stars) == (0, 497)
    assert [(reason, as_tuple(pair)) for reason, pair in figures.failures] == [
        ("PredictionFailed", (1, 2)),
        ("internal error (KeyError)", (1, 1)),
        ("ProviderTimeout", (0, 1)),
    ]


async def test_figures_across_all_bots(db: Database) -> None:
    await seed(db)
    totals = await stats.collect(db, None, NOW)
    assert (totals.users_total, as_tuple(totals.new_users)) == (4, (2, 3))
    assert as_tuple(totals.generations) == (4, 7)
    assert as_tuple(totals.charged_net) == (13, 16)
    assert as_tuple(totals.paid.amount) == (350, 400)
    other = await stats.collect(db, "other", NOW)
    assert (other.users_total, as_tuple(other.generations), as_tuple(other.charged)) == (1, (1, 1), (6, 6))
    assert other.failures == []


async def test_an_empty_database_has_zero_figures(db: Database) -> None:
    figures = await stats.collect(db, "main", NOW)
    assert (figures.users_total, as_tuple(figures.generations), figures.by_kind) == (0, (0, 0), {})
    assert (as_tuple(figures.charged_net), as_tuple(figures.paid.amount), figures.failures) == (
        (0, 0),
        (0, 0),
        [],
    )


async def test_rows_with_the_databases_own_timestamps_count_as_today(db: Database) -> None:
    """created_at from the server default (SQLite's CURRENT_TIMESTAMP, PostgreSQL's now()) compares
    right against bounds computed in Python."""
    async with db.transaction() as session:
        session.add(User(bot_name="main", telegram_id=9, username=None, language="en", balance=0))
    figures = await stats.collect(db, "main")
    assert (figures.users_total, as_tuple(figures.new_users)) == (1, (1, 1))
    later = await stats.collect(db, "main", datetime.now(UTC) + timedelta(days=8))
    assert (later.users_total, as_tuple(later.new_users)) == (1, (0, 0))


async def test_a_users_account(db: Database) -> None:
    await seed(db)
    account = await stats.user_account(db, "main", 1)
    assert account is not None
    assert (account.user.username, account.user.balance) == ("alice", 103)
    assert [order.id[:2] for order in account.orders] == ["o4", "o6", "o1"]
    assert {generation.id for generation in account.generations} == {"g1", "g2", "g6"}
    assert account.generations[-1].id == "g1"
    assert [entry.operation_key for entry in account.ledger][:2] == ["charge:g6", "payment:ch1"]
    assert len(account.ledger) == 6
    assert await stats.user_account(db, "main", 4) is None  # a user of another bot
    assert await stats.user_account(db, "main", 999) is None

    shown = render_account(account, "main", "en")
    assert "👤 User 1 (@alice) of main" in shown
    assert "Balance: 103 stars" in shown
    assert "• o1aaaaaa stars_100: 100 stars for 50 XTR, paid, 2025-06-15 09:00" in shown
    assert "text_to_video (some-model): failed, 4 stars, refunded 4 stars" in shown
    assert "• 2025-06-15 11:00 −4 ⭐ → 103 ⭐, charge:g6" in shown
    assert "+10 ⭐ → 10 ⭐, grant:welcome:1 (welcome bonus)" in shown


async def test_the_figures_read_well_in_russian(db: Database) -> None:
    await seed(db)
    figures = await stats.collect(db, "main", NOW)
    totals = await stats.collect(db, None, NOW)
    shown = render_stats(figures, totals, 2, "ru")
    assert "👥 Всего: 3 пользователя; новых: 1 сегодня, 2 за 7 дней" in shown
    assert "🎨 3 генерации сегодня, 6 генераций за 7 дней" in shown
    assert "• сбой: 2 / 4" in shown
    assert "Списано за вычетом возвратов: 7 звёзд сегодня, 10 звёзд за 7 дней" in shown
    assert "• сегодня: 100 XTR, 2 платежа, начислено 200 звёзд" in shown
    assert "• 7 дней: 250 XTR, 1 платёж, списано 497 звёзд" in shown
    assert "• PredictionFailed: 1 / 2" in shown
    assert "🌐 Все боты (2 бота): 4 пользователя" in shown
    english = render_stats(figures, None, 1, "en")
    assert "🎨 3 generations today, 6 generations in 7 days" in english
    assert "🌐" not in english
    assert len(shown) < MESSAGE_LIMIT


def test_a_long_message_is_cut_to_what_telegram_accepts() -> None:
    message = "\n".join(f"line {index} " + "x" * 50 for index in range(200))
    cut = fit(message)
    assert len(cut) <= MESSAGE_LIMIT
    assert cut.endswith("\n…")
    assert message.startswith(cut.removesuffix("\n…"))
    assert fit("short") == "short"


def test_the_reason_is_the_errors_class() -> None:
    assert stats.failure_reason("PredictionFailed: CUDA out of memory") == "PredictionFailed"
    assert stats.failure_reason("internal error (KeyError)") == "internal error (KeyError)"
    assert stats.failure_reason(None) == "?"
