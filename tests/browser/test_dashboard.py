"""The admin dashboard in a real headless Chromium (Playwright on the system's Chromium), against the
whole app in-process with real Redis, its embedded worker and the fake providers: log in, watch the
figures move as generations run on both plans, switch the plan from the page, log out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest
from playwright.async_api import Browser, Page, expect

from app import App
from bot.http.dashboard.auth import SESSION_COOKIE
from generation.plan import PlanMode
from tests.conftest import API_TOKEN, AppFactory
from tests.e2e.helpers import USER, all_settled

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOT = ROOT / ".artifacts" / "dashboard.png"
# A prompt that would run script if the page ever put it in as HTML.
HOSTILE_PROMPT = '<img src=x onerror="window.__pwned = true">'
# Whether some row of a table has these texts in these cells: [[cell index, text], ...].
ROW_WITH = """([table, cells]) => Array.from(document.querySelectorAll(`#table-${table} tbody tr`)).some(
  (row) => cells.every(([index, text]) => row.cells[index]?.textContent === text))"""


def base(app: App) -> str:
    return f"http://127.0.0.1:{app.http_port}"


async def create_image(app: App, prompt: str) -> dict[str, Any]:
    """A text_to_image through the HTTP API, as any client of it would."""
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{base(app)}/api/generation/text-to-image",
            json={"telegram_id": USER, "bot_name": "image_bot", "prompt": prompt},
            headers={"Authorization": f"Bearer {API_TOKEN}"},
        ) as answer,
    ):
        assert answer.status == 202
        body: dict[str, Any] = await answer.json()
        return body


async def shows_row(page: Page, table: str, cells: dict[int, str]) -> None:
    """Wait until the page shows such a row (the script refreshes it every few seconds)."""
    await page.wait_for_function(ROW_WITH, arg=[table, [[index, text] for index, text in cells.items()]])


async def mark_document(page: Page) -> None:
    """A mark that a reload would wipe: the figures must move without one."""
    await page.evaluate("() => { window.__sameDocument = true; }")


async def still_same_document(page: Page) -> bool:
    return bool(await page.evaluate("() => window.__sameDocument === true"))


async def test_the_dashboard_in_a_browser(make_app: AppFactory, redis_url: str, browser: Browser) -> None:
    app = await make_app(redis_url=redis_url)
    assert app.generations is not None and app.worker is not None  # Plan A, with the embedded worker
    context = await browser.new_context(viewport={"width": 1500, "height": 1000})
    page = await context.new_page()
    page.set_default_timeout(15_000)
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(f"script error: {error}"))
    page.on(
        "console",
        lambda message: problems.append(message.text) if "Content Security Policy" in message.text else None,
    )

    # Not logged in: the login form; a wrong password is refused.
    await page.goto(f"{base(app)}/admin")
    assert page.url == f"{base(app)}/admin/login"
    await page.fill("#password", "not the password")
    await page.click("button[type=submit]")
    await expect(page.locator(".error")).to_have_text("Wrong password.")
    assert await context.cookies() == []

    await page.fill("#password", API_TOKEN)
    await page.click("button[type=submit]")
    await page.wait_for_url(f"{base(app)}/admin")
    [cookie] = await context.cookies()
    assert cookie["name"] == SESSION_COOKIE and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert cookie["path"] == "/admin"
    await expect(page.locator("#fact-plan")).to_have_text("Plan A")
    await expect(page.locator("#fact-queue")).to_have_text("answers")
    await expect(page.locator("#mode-auto")).to_have_attribute("aria-pressed", "true")
    await shows_row(page, "figures", {0: "A", 1: "all kinds", 2: "0"})

    # A generation on Plan A: the page shows it without a reload.
    await mark_document(page)
    first = await create_image(app, "a fox on Plan A")
    assert first["plan"] == "A"
    await all_settled(app, 1)
    await shows_row(page, "figures", {0: "A", 1: "text_to_image", 2: "1", 3: "1", 7: "100.0 %"})
    await shows_row(page, "generations", {1: first["id"], 5: "A", 6: "done", 10: "a fox on Plan A"})
    await shows_row(page, "providers", {0: "replicate", 1: "1", 2: "1"})
    assert await still_same_document(page)
    assert int(await page.locator("#dashboard").get_attribute("data-refreshes") or 0) >= 1

    # Plan B from the page: the form posts, the app's mode changes, and the page says so.
    await page.click("#mode-b")
    await page.wait_for_url(f"{base(app)}/admin?notice=mode")
    await expect(page.locator(".notice")).to_have_text("Plan mode changed.")
    await expect(page.locator("#mode-b")).to_have_attribute("aria-pressed", "true")
    await expect(page.locator("#fact-plan")).to_have_text("Plan B")
    assert await app.generations.mode() == (PlanMode.b, "/plan")

    await mark_document(page)
    second = await create_image(app, HOSTILE_PROMPT)
    assert second["plan"] == "B"
    await all_settled(app, 2)
    await shows_row(page, "figures", {0: "B", 1: "text_to_image", 2: "1", 3: "1"})
    await shows_row(page, "figures", {0: "A", 1: "text_to_image", 2: "1", 3: "1"})
    await shows_row(page, "generations", {1: second["id"], 5: "B", 6: "done", 10: HOSTILE_PROMPT})
    await shows_row(page, "providers", {0: "replicate", 1: "2", 2: "2"})
    assert await still_same_document(page)
    assert await page.evaluate("() => window.__pwned") is None  # shown as text, never run

    # The A/B share, from its form.
    await page.fill("#plan-b-share", "40")
    await page.click(".share button[type=submit]")
    await page.wait_for_url(f"{base(app)}/admin?notice=share")
    assert await app.generations.plan_b_share() == (40, "/ab")
    await expect(page.locator("#plan-b-share")).to_have_value("40")

    SCREENSHOT.parent.mkdir(exist_ok=True)
    await page.screenshot(path=str(SCREENSHOT), full_page=True)
    assert SCREENSHOT.is_file() and SCREENSHOT.stat().st_size > 0

    # Logging out ends the session: the page, its data and the old cookie are all refused.
    await page.click("#logout")
    await page.wait_for_url(f"{base(app)}/admin/login")
    await page.goto(f"{base(app)}/admin")
    assert page.url == f"{base(app)}/admin/login"
    assert (await page.request.get(f"{base(app)}/admin/data.json")).status == 401
    async with (
        aiohttp.ClientSession(cookies={SESSION_COOKIE: cookie["value"]}) as replay,
        replay.get(f"{base(app)}/admin/data.json") as answer,
    ):
        assert answer.status == 401
    assert problems == []
    await context.close()
