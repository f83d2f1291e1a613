"""Admin /stats and /user through the fake Bot API: the figures after real generations, one user's
account, and nothing of either for a non-admin."""

from __future__ import annotations

from tests.conftest import ADMIN_ID, OTHER_BOT_TOKEN, AppFactory
from tests.e2e.helpers import USER, Chat, all_settled
from tests.fakes.replicate import FakeReplicate, Outcome
from tests.fakes.telegram import FakeTelegram

FLUX = "black-forest-labs/flux-schnell"


async def answers(telegram: FakeTelegram, chat: Chat, containing: str, count: int) -> None:
    """Wait until the chat got `count` messages containing `containing` (a repeated answer)."""
    await telegram.wait_for(lambda _call: sum(containing in text for text in chat.texts()) >= count)


async def make_some_generations(
    app_factory: AppFactory, telegram: FakeTelegram, replicate: FakeReplicate
) -> None:
    """On image_bot: one album of 2 images (done), one image that fails (refunded); on other_bot: one."""
    app = await app_factory()
    chat = Chat(telegram)
    chat.send("/image 2 a fox")
    await chat.reply("Charged 2 ⭐. Balance: 8 ⭐")
    replicate.script(FLUX, Outcome(status="failed", error="CUDA out of memory"))
    chat.send("/image a wolf")
    await chat.reply("1 ⭐ returned. Balance: 8 ⭐")
    other = Chat(telegram, token=OTHER_BOT_TOKEN)
    other.send("/image a bear")
    await other.reply("Charged 1 ⭐")
    await all_settled(app, 3)


async def test_admin_stats_show_this_bots_figures_and_totals(
    make_app: AppFactory, telegram: FakeTelegram, replicate: FakeReplicate
) -> None:
    await make_some_generations(make_app, telegram, replicate)
    admin = Chat(telegram, user_id=ADMIN_ID)
    answer = await admin.ask("/stats", "Statistics of image_bot")
    shown = answer.text or ""
    for line in [
        "👥 2 users in all; new: 2 today, 2 in 7 days",  # the user and the admin
        "🎨 2 generations today, 2 generations in 7 days",
        "• text_to_image: 2 / 2",
        "• B: 2 / 2",
        "• done: 1 / 1",
        "• failed: 1 / 1",
        "⭐ Charged, net of refunds: 2 stars today, 2 stars in 7 days",
        "↩️ Refunded: 1 star today, 1 star in 7 days",
        "• today: 0 XTR, 0 payments, 0 stars credited",
        "❌ Failures by reason (today / 7 days):",
        "🌐 All 2 bots: 3 users; 3 generations today, 3 generations in 7 days; "
        "net charged 3 stars today, 3 stars in 7 days",
    ]:
        assert line in shown, line
    failures = shown.split("❌", 1)[1].splitlines()
    assert any(row.startswith("• ") and row.endswith(": 1 / 1") for row in failures), failures
    assert "CUDA" not in shown  # the reason is the error's class, not its message

    await admin.ask("/lang", "Язык: русский")
    russian = await admin.ask("/stats", "Статистика бота image_bot")
    assert "🎨 2 генерации сегодня, 2 генерации за 7 дней" in (russian.text or "")
    assert "• сбой: 1 / 1" in (russian.text or "")


async def test_a_non_admin_gets_no_figures_and_no_account(
    make_app: AppFactory, telegram: FakeTelegram, replicate: FakeReplicate
) -> None:
    await make_app()
    user = Chat(telegram)
    await user.ask("/stats", "I don't know this command")
    user.send(f"/user {USER}")
    await answers(telegram, user, "I don't know this command", 2)
    texts = user.texts()
    assert not any("Statistics" in text or "👤" in text or "Usage: /user" in text for text in texts)


async def test_admin_sees_one_users_account(
    make_app: AppFactory, telegram: FakeTelegram, replicate: FakeReplicate
) -> None:
    await make_some_generations(make_app, telegram, replicate)
    admin = Chat(telegram, user_id=ADMIN_ID)
    answer = await admin.ask(f"/user {USER}", f"👤 User {USER}")
    shown = answer.text or ""
    assert "of image_bot" in shown
    assert "Language: en. Balance: 8 stars." in shown
    assert "🧾 No orders." in shown
    assert "text_to_image (flux-schnell): done, 2 stars, refunded 0 stars" in shown
    assert "text_to_image (flux-schnell): failed, 1 star, refunded 1 star" in shown
    assert "+10 ⭐ → 10 ⭐, grant:welcome:" in shown
    assert "−2 ⭐ → 8 ⭐, charge:" in shown
    assert "+1 ⭐ → 8 ⭐, refund:" in shown


async def test_admin_user_with_a_bad_or_unknown_id(
    make_app: AppFactory, telegram: FakeTelegram, replicate: FakeReplicate
) -> None:
    await make_app()
    admin = Chat(telegram, user_id=ADMIN_ID)
    bad = ["/user", "/user abc", "/user 12 34", "/user -5", "/user 0", "/user 99999999999999999999"]
    for count, command in enumerate(bad, start=1):
        admin.send(command)
        await answers(telegram, admin, "Usage: /user <telegram_id>", count)
    await admin.ask("/user 424242", "User 424242 is not a user of image_bot")
