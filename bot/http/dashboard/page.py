"""The dashboard's HTML: templates/ filled by `fill`, which escapes every value it is given unless that
value is `Markup` (HTML built here, from values `fill` or `html.escape` escaped). A value from the
database (a prompt, a model, an error) can thus only ever reach the page as text."""

from __future__ import annotations

import html
from functools import cache
from pathlib import Path
from string import Template

from bot.http.dashboard.snapshot import Snapshot, Table
from generation.plan import PlanMode

TEMPLATES = Path(__file__).with_name("templates")
REFRESH_SECONDS = 3
SCRIPT = '<script src="/admin/static/dashboard.js" defer></script>'

# What the page says after a form, by the fixed key its redirect carries (never text from the URL).
NOTICES = {
    "mode": "Plan mode changed.",
    "share": "Plan B share changed.",
    "bad-mode": "Unknown plan mode: choose auto, a or b.",
    "bad-share": "The share is a whole percent from 0 to 100.",
}
FACT_LABELS = {
    "plan": "Plan for new work",
    "mode": "Mode",
    "breaker": "Queue breaker",
    "queue": "Redis queue",
    "queue-depth": "Queue depth",
    "plan-b-share": "Plan B share",
}
MODE_TITLES = {PlanMode.auto: "auto", PlanMode.a: "A only", PlanMode.b: "B only"}


class Markup(str):
    """HTML already built from escaped parts: `fill` inserts it as it is."""


@cache
def _template(name: str) -> Template:
    return Template((TEMPLATES / name).read_text(encoding="utf-8"))


def fill(name: str, **values: object) -> Markup:
    escaped = {
        key: value if isinstance(value, Markup) else html.escape(str(value)) for key, value in values.items()
    }
    return Markup(_template(name).substitute(escaped))


def _document(title: str, body: Markup, *, scripts: bool = False) -> str:
    return fill("layout.html", title=title, body=body, scripts=Markup(SCRIPT if scripts else ""))


def login_page(message: str = "") -> str:
    shown = Markup(f'<p class="error" role="alert">{html.escape(message)}</p>') if message else Markup("")
    return _document("Log in", fill("login.html", message=shown))


def off_page() -> str:
    return _document("Dashboard off", fill("off.html"))


def refused_page() -> str:
    return _document("Refused", fill("refused.html"))


def dashboard_page(snapshot: Snapshot, csrf_token: str, notice: str | None = None) -> str:
    body = fill(
        "dashboard.html",
        refresh_seconds=REFRESH_SECONDS,
        updated=snapshot.facts["updated"],
        csrf_token=csrf_token,
        notice=_notice(notice),
        facts=_facts(snapshot.facts),
        mode_buttons=_mode_buttons(snapshot.state["mode"]),
        plan_b_share=snapshot.state["plan_b_share"],
        **{name: table_html(name, table) for name, table in snapshot.tables.items()},
    )
    return _document("Dashboard", body, scripts=True)


def _notice(key: str | None) -> Markup:
    text = NOTICES.get(key or "")
    return Markup(f'<p class="notice" role="status">{html.escape(text)}</p>') if text else Markup("")


def _facts(facts: dict[str, str]) -> Markup:
    return Markup(
        "\n".join(
            f"<div><dt>{html.escape(label)}</dt>"
            f'<dd id="fact-{key}">{html.escape(facts.get(key, ""))}</dd></div>'
            for key, label in FACT_LABELS.items()
        )
    )


def _mode_buttons(current: str) -> Markup:
    return Markup(
        "\n".join(
            f'<button type="submit" name="mode" value="{mode.value}" id="mode-{mode.value}"'
            f' aria-pressed="{str(mode.value == current).lower()}">{html.escape(title)}</button>'
            for mode, title in MODE_TITLES.items()
        )
    )


def table_html(name: str, table: Table) -> Markup:
    """The table the script refills in place (same id, same columns) on each refresh."""
    head = "".join(f"<th scope=col>{html.escape(column)}</th>" for column in table.columns)
    if table.rows:
        body = "\n".join(
            "<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>" for row in table.rows
        )
    else:
        body = f'<tr class="empty"><td colspan="{len(table.columns)}">{html.escape(table.empty)}</td></tr>'
    return Markup(
        f'<div class="scroll"><table id="table-{html.escape(name)}">'
        f"<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody></table></div>"
    )
