"""What the dashboard shows, read in one go and formatted once: the page renders it on the server and
`data.json` hands the same to the page's script, so both say the same thing in the same words.

Each table is display text only (the script puts it in with `textContent`, the page through
`html.escape`); `state` carries the raw values for anything that wants to compute with them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from bot.http.dashboard import queries
from generation.dispatcher import Dispatcher
from generation.plan_figures import Figures, plan_figures
from generation.services import Services
from generation.store import Generation, GenerationStatus, Order, as_utc

FIGURES_WINDOW = timedelta(hours=24)
PROVIDER_WINDOW = timedelta(hours=1)
RECENT_GENERATIONS = 50
RECENT_ORDERS = 30
# How much of a prompt and of an error a table row shows: enough to recognise, not a wall of text.
PROMPT_SHOWN = 80
ERROR_SHOWN = 160
NOTHING = "—"
T = TypeVar("T")
IN_FLIGHT = frozenset({GenerationStatus.queued, GenerationStatus.running})

# The columns of each table, in the order of its rows' cells.
FIGURE_COLUMNS: tuple[str, ...] = (
    *("Plan", "Kind", "Count", "Done", "Failed", "Canceled", "Active"),
    *("Success", "p50", "p95", "Failures"),
)
PROVIDER_COLUMNS: tuple[str, ...] = (
    *("Provider", "Ended", "Done", "Failed", "Canceled"),
    *("Failed tries", "Failures", "Last success"),
)
GENERATION_COLUMNS: tuple[str, ...] = (
    *("Created", "Id", "Bot", "Kind", "Model", "Plan", "Status"),
    *("Price", "Refunded", "Duration", "Prompt", "Error"),
)
ORDER_COLUMNS: tuple[str, ...] = (
    *("Created", "Order", "Bot", "User", "Package", "Stars"),
    *("Paid (XTR)", "Status", "Refunded stars", "Charge id"),
)


@dataclass(frozen=True)
class Table:
    columns: tuple[str, ...]
    rows: list[list[str]]
    empty: str  # what the table says when it has no rows

    def as_json(self) -> dict[str, Any]:
        return {"columns": list(self.columns), "rows": self.rows, "empty": self.empty}


@dataclass(frozen=True)
class Snapshot:
    state: dict[str, Any]  # raw values: mode, plan, breaker, queue depth, A/B share...
    facts: dict[str, str]  # the same, as the page words them, by the id of the element showing each
    tables: dict[str, Table]

    def as_json(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "facts": self.facts,
            "tables": {name: table.as_json() for name, table in self.tables.items()},
        }


async def take_snapshot(services: Services, generations: Dispatcher, now: datetime | None = None) -> Snapshot:
    moment = (now or datetime.now(UTC)).astimezone(UTC)
    timeout = services.settings.redis_timeout
    queue = generations.queue
    queue_answers, depth = await asyncio.gather(
        _ask_queue(queue.ping if queue is not None else None, timeout),
        _ask_queue(queue.depth if queue is not None else None, timeout),
    )
    mode, mode_source = await generations.mode()
    plan = await generations.current_plan(queue_answers)
    share, share_source = await generations.plan_b_share()
    state: dict[str, Any] = {
        "plan": plan.value,
        "mode": mode.value,
        "mode_source": mode_source,
        "breaker": generations.breaker.state.value,
        "queue": None if queue is None else bool(queue_answers),
        "queue_depth": depth,
        "plan_b_share": share,
        "plan_b_share_source": share_source,
        "updated_at": moment.isoformat(),
    }
    facts = {
        "plan": f"Plan {plan.value}",
        "mode": f"{mode.value} (set by {mode_source})",
        "breaker": generations.breaker.describe(),
        "queue": _queue_words(state["queue"]),
        "queue-depth": NOTHING if state["queue_depth"] is None else f"{state['queue_depth']} waiting",
        "plan-b-share": f"{share} % of new work in auto mode (set by {share_source})",
        "updated": _when(moment),
    }
    db = services.db
    per_plan = await plan_figures(db, since=moment - FIGURES_WINDOW)
    per_kind = await plan_figures(db, since=moment - FIGURES_WINDOW, by_kind=True)
    health = await queries.provider_health(db, services.catalog, since=moment - PROVIDER_WINDOW)
    recent = await queries.recent_generations(db, RECENT_GENERATIONS)
    orders = await queries.recent_orders(db, RECENT_ORDERS)
    tables = {
        "figures": _figures_table(
            # Each plan's total first, then its kinds.
            sorted([*per_plan, *per_kind], key=lambda row: (row.plan, row.kind is not None, row.kind or ""))
        ),
        "providers": _providers_table(health),
        "generations": _generations_table(recent, moment),
        "orders": _orders_table(orders),
    }
    return Snapshot(state=state, facts=facts, tables=tables)


async def _ask_queue(ask: Callable[[], Awaitable[T]] | None, timeout: float) -> T | None:
    """The queue's answer, or None: no queue, or no answer in time (a dashboard that waited on a
    dead Redis would show nothing at all)."""
    if ask is None:
        return None
    try:
        return await asyncio.wait_for(ask(), timeout=timeout)
    except Exception:
        return None


def _queue_words(answers: bool | None) -> str:
    if answers is None:
        return "off (no Redis: Plan B only)"
    return "answers" if answers else "does not answer"


def _figures_table(figures: list[Figures]) -> Table:
    rows = [
        [
            figure.plan,
            figure.kind or "all kinds",
            str(figure.count),
            str(figure.done),
            str(figure.failed),
            str(figure.canceled),
            str(figure.active),
            NOTHING if figure.success_rate is None else f"{figure.success_rate * 100:.1f} %",
            _seconds(figure.p50_seconds),
            _seconds(figure.p95_seconds),
            _counts(figure.failures),
        ]
        for figure in figures
    ]
    return Table(
        columns=FIGURE_COLUMNS,
        rows=rows,
        empty="No generations in the last 24 h.",
    )


def _providers_table(health: list[queries.ProviderHealth]) -> Table:
    rows = [
        [
            row.provider,
            str(row.ended),
            str(row.done),
            str(row.failed),
            str(row.canceled),
            str(row.failed_tries),
            _counts(dict(row.failures)),
            _when(row.last_success),
        ]
        for row in health
    ]
    return Table(
        columns=PROVIDER_COLUMNS,
        rows=rows,
        empty="No provider in the catalogue.",
    )


def _generations_table(generations: list[Generation], now: datetime) -> Table:
    rows = [
        [
            _when(generation.created_at),
            generation.id,
            generation.bot_name,
            generation.kind,
            generation.model,
            generation.plan,
            generation.status,
            str(generation.price),
            str(generation.refunded),
            _duration(generation, now),
            _shortened(_prompt(generation.request), PROMPT_SHOWN),
            _shortened(generation.error or "", ERROR_SHOWN),  # starts with the reason: its class
        ]
        for generation in generations
    ]
    return Table(
        columns=GENERATION_COLUMNS,
        rows=rows,
        empty="No generations yet.",
    )


def _orders_table(orders: list[Order]) -> Table:
    rows = [
        [
            _when(order.created_at),
            order.id,
            order.bot_name,
            str(order.telegram_id),
            order.package,
            str(order.stars),
            str(order.amount),
            order.status,
            str(order.refunded_stars),
            order.charge_id or NOTHING,
        ]
        for order in orders
    ]
    return Table(
        columns=ORDER_COLUMNS,
        rows=rows,
        empty="No payments yet.",
    )


def _when(moment: datetime | None) -> str:
    return NOTHING if moment is None else as_utc(moment).strftime("%Y-%m-%d %H:%M:%S UTC")


def _seconds(value: float | None) -> str:
    return NOTHING if value is None else f"{value:.2f} s"


def _counts(counts: Mapping[str, int]) -> str:
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return ", ".join(f"{reason}: {count}" for reason, count in ranked) or NOTHING


def _duration(generation: Generation, now: datetime) -> str:
    """End to end for a finished one; so far, marked as such, for one still in flight."""
    started = as_utc(generation.created_at)
    if generation.finished_at is not None:
        # At least 0: on SQLite finished_at is the database's clock, in whole seconds, and may read
        # a little earlier than created_at, which is set here to the microsecond.
        return _seconds(max(0.0, (as_utc(generation.finished_at) - started).total_seconds()))
    if generation.status not in IN_FLIGHT:
        return NOTHING
    return f"{max(0.0, (now - started).total_seconds()):.0f} s so far"


def _prompt(request: dict[str, Any] | None) -> str:
    """What the user asked for: the prompt, or a speech's text, or a training's trigger word."""
    for field_name in ("prompt", "text", "trigger_word"):
        value = (request or {}).get(field_name)
        if isinstance(value, str) and value:
            return value
    return ""


def _shortened(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
