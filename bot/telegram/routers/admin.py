"""Admin commands: /plan (show or switch the plan), /ab (the A/B share of Plan B and the figures that
compare the plans), /grant, /stats (figures) and /user (one user's account). The router only sees
admins' messages; anyone else's /plan, /ab, /stats or /user falls through to the unknown-command
answer, with no admin output."""

from __future__ import annotations

from datetime import UTC, datetime

from aiogram import Bot, Router
from aiogram.exceptions import TelegramAPIError
from aiogram.filters import Command, CommandObject
from aiogram.types import Message
from loguru import logger

from bot.telegram.arguments import BIGINT_MAX, whole_number
from bot.telegram.filters import in_loop
from generation import ledger, stats
from generation.dispatcher import Dispatcher
from generation.plan import PlanMode, parse_share
from generation.plan_figures import Figures, plan_figures
from generation.services import Services
from generation.store import as_utc
from generation.texts import count_of, text
from generation.users import find_user

# What one /grant may credit: enough for any gift or correction, far from a typo's billions.
MAX_GRANT = 1_000_000
# No grant takes a balance past this: a sane bound, and far below what the BIGINT column holds, so
# neither a slip of the keyboard nor repeated grants come near an overflow (which SQLite answers by
# storing the balance as an inexact REAL). Payments are not capped: each is a package's worth.
MAX_BALANCE = 1_000_000_000_000


def build_admin_router(admin_ids: list[int]) -> Router:
    router = Router(name="admin")
    admins = set(admin_ids)
    router.message.filter(
        in_loop(lambda message: message.from_user is not None and message.from_user.id in admins)
    )

    @router.message(Command("plan"))
    async def plan(message: Message, command: CommandObject, lang: str, generations: Dispatcher) -> None:
        argument = (command.args or "").strip().lower()
        if argument:
            try:
                mode = PlanMode(argument)
            except ValueError:
                await message.answer("/plan a | /plan b | /plan auto")
                return
            await generations.set_mode(mode)
            current = await generations.current_plan()
            await message.answer(text("plan_switched", lang, mode=mode.value, plan=current.value))
            return
        await message.answer(fit(await plan_status(generations, lang)))

    @router.message(Command("ab"))
    async def ab(message: Message, command: CommandObject, lang: str, generations: Dispatcher) -> None:
        argument = (command.args or "").strip()
        if argument:
            percent = parse_share(argument)
            if percent is None:
                await message.answer(text("ab_usage", lang))
                return
            await generations.set_plan_b_share(percent)
            await message.answer(text("ab_set", lang, share=percent))
            return
        await message.answer(fit(await ab_status(generations, lang)))

    @router.message(Command("grant"))
    async def grant(
        message: Message, command: CommandObject, bot: Bot, bot_name: str, lang: str, services: Services
    ) -> None:
        words = (command.args or "").split()
        telegram_id = whole_number(words[0], minimum=1, maximum=BIGINT_MAX) if len(words) == 2 else None
        if telegram_id is None:
            await message.answer(text("grant_usage", lang))
            return
        stars = whole_number(words[1], minimum=1, maximum=MAX_GRANT)
        if stars is None:
            await message.answer(text("grant_amount_invalid", lang, max=MAX_GRANT))
            return
        assert message.from_user is not None  # the router's filter let only an admin's message in
        async with services.db.transaction() as session:
            target = await find_user(session, bot_name, telegram_id)
            # Read in the credit's transaction; a payment landing in between may pass the cap by its
            # own package, which stays far below the BIGINT's end.
            over_cap = target is not None and target.balance + stars > MAX_BALANCE
            if target is None or over_cap:
                posting = None
            else:
                # Keyed by the admin's message (a message id is unique within its chat): a repeated
                # update credits once. The note names the admin, who is not the chat in a group.
                key = f"grant:{bot_name}:{message.chat.id}:{message.message_id}"
                posting = await ledger.credit(
                    session, target.id, stars, key, note=f"by admin {message.from_user.id}"
                )
        if target is not None and over_cap:
            await message.answer(
                text("grant_over_cap", lang, telegram_id=telegram_id, balance=target.balance, cap=MAX_BALANCE)
            )
            return
        if target is None or posting is None:
            await message.answer(text("grant_unknown_user", lang, telegram_id=telegram_id))
            return
        if not posting.applied:
            return
        await message.answer(
            text("grant_done", lang, stars=stars, telegram_id=telegram_id, balance=posting.balance)
        )
        try:
            await bot.send_message(
                telegram_id, text("granted_notice", target.language, stars=stars, balance=posting.balance)
            )
        except TelegramAPIError as error:  # the user may have blocked the bot; the credit stands
            logger.info("could not tell user {} about a grant: {}", telegram_id, error.message)

    @router.message(Command("stats"))
    async def show_stats(message: Message, bot_name: str, lang: str, services: Services) -> None:
        now = datetime.now(UTC)
        figures = await stats.collect(services.db, bot_name, now)
        bots = len(services.settings.bot_tokens)
        totals = await stats.collect(services.db, None, now) if bots > 1 else None
        await message.answer(fit(render_stats(figures, totals, bots, lang)))

    @router.message(Command("user"))
    async def show_user(
        message: Message, command: CommandObject, bot_name: str, lang: str, services: Services
    ) -> None:
        words = (command.args or "").split()
        telegram_id = whole_number(words[0], minimum=1, maximum=BIGINT_MAX) if len(words) == 1 else None
        if telegram_id is None:
            await message.answer(text("admin_user_usage", lang))
            return
        account = await stats.user_account(services.db, bot_name, telegram_id)
        if account is None:
            await message.answer(text("admin_user_unknown", lang, telegram_id=telegram_id, bot=bot_name))
            return
        await message.answer(fit(render_account(account, bot_name, lang)))

    return router


# Telegram refuses a message longer than this.
MESSAGE_LIMIT = 4096


def fit(message: str) -> str:
    """A message Telegram accepts: cut at the last whole line that fits, marked with an ellipsis."""
    if len(message) <= MESSAGE_LIMIT:
        return message
    cut = message[: MESSAGE_LIMIT - 2]
    if "\n" in cut:
        cut = cut.rsplit("\n", 1)[0]
    return cut + "\n…"


def render_stats(figures: stats.BotStats, totals: stats.BotStats | None, bots: int, lang: str) -> str:
    """/stats in the admin's language: this bot's figures, then (several bots) a line of totals."""

    def stars(count: int) -> str:
        return count_of(count, "star", lang)

    def rows(title: str, pairs: dict[str, stats.Pair], names: dict[str, str] | None = None) -> list[str]:
        if not pairs:
            return []
        shown = names or {}
        return [text(title, lang)] + [
            text("admin_stats_row", lang, name=shown.get(name, name), today=pair.today, week=pair.week)
            for name, pair in pairs.items()
        ]

    def payments(key: str, kind: stats.Payments, today: bool) -> str:
        return text(
            key,
            lang,
            amount=kind.amount.today if today else kind.amount.week,
            payments=count_of(kind.count.today if today else kind.count.week, "payment", lang),
            stars=stars(kind.stars.today if today else kind.stars.week),
        )

    statuses = {status: text(f"admin_status_{status}", lang) for status in STATUSES}
    net, refunded = figures.charged_net, figures.refunded
    lines = [
        text("admin_stats_title", lang, bot=figures.bot_name),
        "",
        text(
            "admin_stats_users",
            lang,
            users=count_of(figures.users_total, "user", lang),
            today=figures.new_users.today,
            week=figures.new_users.week,
        ),
        "",
        text(
            "admin_stats_generations",
            lang,
            today=count_of(figures.generations.today, "generation", lang),
            week=count_of(figures.generations.week, "generation", lang),
        ),
        *rows("admin_stats_by_kind", figures.by_kind),
        *rows("admin_stats_by_plan", figures.by_plan),
        *rows("admin_stats_by_status", figures.by_status, statuses),
        "",
        text("admin_stats_charged", lang, today=stars(net.today), week=stars(net.week)),
        text("admin_stats_refunded", lang, today=stars(refunded.today), week=stars(refunded.week)),
        "",
        text("admin_stats_revenue", lang),
        payments("admin_stats_payments_today", figures.paid, today=True),
        payments("admin_stats_payments_week", figures.paid, today=False),
        text("admin_stats_refunded_payments", lang),
        payments("admin_stats_refunds_today", figures.refunded_payments, today=True),
        payments("admin_stats_refunds_week", figures.refunded_payments, today=False),
        "",
    ]
    if figures.failures:
        lines += rows("admin_stats_failures", dict(figures.failures))
    else:
        lines.append(text("admin_stats_no_failures", lang))
    if totals is not None:
        all_net = totals.charged_net
        lines += [
            "",
            text(
                "admin_stats_all_bots",
                lang,
                bots=count_of(bots, "bot", lang),
                users=count_of(totals.users_total, "user", lang),
                today=count_of(totals.generations.today, "generation", lang),
                week=count_of(totals.generations.week, "generation", lang),
                charged_today=stars(all_net.today),
                charged_week=stars(all_net.week),
                revenue_today=totals.paid.amount.today,
                revenue_week=totals.paid.amount.week,
            ),
        ]
    return "\n".join(lines)


STATUSES = ("queued", "running", "done", "failed", "canceled")
ORDER_STATUSES = ("pending", "paid", "refunding", "refunded")


def render_account(account: stats.UserAccount, bot_name: str, lang: str) -> str:
    """/user in the admin's language: who, balance, recent orders, generations and ledger lines."""
    user = account.user
    lines = [
        text(
            "admin_user_title",
            lang,
            telegram_id=user.telegram_id,
            username=f"@{user.username}" if user.username else text("admin_user_no_username", lang),
            bot=bot_name,
        ),
        text(
            "admin_user_summary",
            lang,
            language=user.language,
            balance=count_of(user.balance, "star", lang),
            created=_date(user.created_at),
        ),
        "",
    ]
    if account.orders:
        lines.append(text("admin_user_orders", lang))
        lines += [
            text(
                "admin_user_order_line",
                lang,
                id=order.id[:8],
                package=order.package,
                stars=count_of(order.stars, "star", lang),
                amount=order.amount,
                status=_named("admin_order_", order.status, ORDER_STATUSES, lang),
                date=_date(order.paid_at or order.created_at),
            )
            for order in account.orders
        ]
    else:
        lines.append(text("admin_user_no_orders", lang))
    lines.append("")
    if account.generations:
        lines.append(text("admin_user_generations", lang))
        lines += [
            text(
                "admin_user_generation_line",
                lang,
                date=_date(generation.created_at),
                kind=generation.kind,
                model=generation.model[:48],
                status=_named("admin_status_", generation.status, STATUSES, lang),
                price=count_of(generation.price, "star", lang),
                refunded=count_of(generation.refunded, "star", lang),
            )
            for generation in account.generations
        ]
    else:
        lines.append(text("admin_user_no_generations", lang))
    lines.append("")
    if account.ledger:
        lines.append(text("admin_user_ledger", lang))
        for entry in account.ledger:
            key = entry.operation_key[:48]
            if entry.note:
                key += f" ({entry.note[:40]})"
            lines.append(
                text(
                    "admin_user_ledger_line",
                    lang,
                    date=_date(entry.created_at),
                    amount=f"+{entry.amount}" if entry.amount >= 0 else f"−{-entry.amount}",
                    balance=entry.balance_after,
                    key=key,
                )
            )
    else:
        lines.append(text("admin_user_no_ledger", lang))
    return "\n".join(lines)


def _named(prefix: str, value: str, known: tuple[str, ...], lang: str) -> str:
    return text(prefix + value, lang) if value in known else value


def _date(moment: datetime | None) -> str:
    return as_utc(moment).strftime("%Y-%m-%d %H:%M") if moment is not None else "-"


async def ab_status(generations: Dispatcher, lang: str) -> str:
    """/ab: the share, whether the mode lets it act, and the plans side by side."""
    mode, _ = await generations.mode()
    lines = [await share_line(generations, lang)]
    if mode is not PlanMode.auto:
        lines.append(text("ab_mode_not_auto", lang, mode=mode.value))
    elif generations.queue is None:
        lines.append(text("ab_no_queue", lang))
    lines += ["", render_comparison(await plan_figures(generations.db), lang)]
    return "\n".join(lines)


async def share_line(generations: Dispatcher, lang: str) -> str:
    share, source = await generations.plan_b_share()
    return text("ab_share", lang, share=share, source=source)


def render_comparison(figures: list[Figures], lang: str) -> str:
    """Plan A and Plan B side by side over the figures' window: volume, outcomes, end-to-end
    percentiles of the done ones and the failure reasons."""
    lines = [text("ab_figures_title", lang)]
    for plan in figures:
        lines.append(
            text(
                "ab_figures_line",
                lang,
                plan=plan.plan,
                generations=count_of(plan.count, "generation", lang),
                done=plan.done,
                failed=plan.failed,
                canceled=plan.canceled,
                active=plan.active,
                success=_percent(plan.success_rate, lang),
                p50=_seconds(plan.p50_seconds, lang),
                p95=_seconds(plan.p95_seconds, lang),
            )
        )
        if plan.failures:
            reasons = ", ".join(f"{reason} {count}" for reason, count in plan.failures.items())
            lines.append(text("ab_figures_failures", lang, reasons=reasons))
    return "\n".join(lines)


def _percent(rate: float | None, lang: str) -> str:
    return text("ab_not_available", lang) if rate is None else f"{rate * 100:.1f} %"


def _seconds(seconds: float | None, lang: str) -> str:
    if seconds is None:
        return text("ab_not_available", lang)
    return text("ab_seconds", lang, seconds=f"{seconds:.1f}")


async def plan_status(generations: Dispatcher, lang: str) -> str:
    mode, source = await generations.mode()
    queue_answers = await generations.queue.ping() if generations.queue is not None else None
    current = await generations.current_plan(queue_answers)
    queue = {None: "not connected", True: "healthy", False: "NOT answering"}[queue_answers]
    counts = await generations.counts_per_plan()
    status = text(
        "plan_status",
        lang,
        plan=current.value,
        mode=mode.value,
        source=source,
        queue=queue,
        breaker=generations.breaker.describe(),
        count_a=counts.get("A", 0),
        count_b=counts.get("B", 0),
    )
    comparison = render_comparison(await plan_figures(generations.db), lang)
    return "\n".join([status, await share_line(generations, lang), "", comparison])
