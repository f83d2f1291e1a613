"""The admin dashboard over HTTP, the whole app in-process: who gets in (password, session cookie, the
bound on wrong passwords), what forms need (the session's CSRF token), the headers of every /admin
answer, and that what users and providers wrote reaches the page as text only."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from http.cookies import SimpleCookie

import aiohttp
import pytest
from sqlalchemy import select

from app import App
from bot.http.dashboard.auth import FAILED_LOGINS_ALLOWED, SESSION_COOKIE, SESSION_SECONDS
from generation.plan import PlanMode
from generation.store import Generation, Order, OrderStatus
from tests.conftest import API_TOKEN, AppFactory
from tests.e2e.helpers import USER, all_settled
from tests.fakes.replicate import FakeReplicate, Outcome
from tests.fakes.tcp_proxy import TcpProxy

FLUX = "black-forest-labs/flux-schnell"
DASHBOARD_PASSWORD = "correct horse battery staple"
CSRF_FIELD = re.compile(r'name="csrf_token" value="([^"]+)"')


def base(app: App) -> str:
    return f"http://127.0.0.1:{app.http_port}"


@pytest.fixture
async def browser_like() -> AsyncIterator[aiohttp.ClientSession]:
    """A client that keeps cookies as a browser does (for 127.0.0.1 too) and follows no redirect by
    itself, so each answer can be looked at."""
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        yield session


async def log_in(http: aiohttp.ClientSession, app: App, password: str = API_TOKEN) -> str:
    """Log in; answers the CSRF token the page's forms carry."""
    async with http.post(
        f"{base(app)}/admin/login", data={"password": password}, allow_redirects=False
    ) as answer:
        assert answer.status == 303 and answer.headers["Location"] == "/admin"
    async with http.get(f"{base(app)}/admin", allow_redirects=False) as page:
        assert page.status == 200
        found = CSRF_FIELD.search(await page.text())
    assert found is not None
    return found.group(1)


async def post_form(
    http: aiohttp.ClientSession, app: App, path: str, form: dict[str, str]
) -> aiohttp.ClientResponse:
    async with http.post(f"{base(app)}{path}", data=form, allow_redirects=False) as answer:
        await answer.read()
        return answer


async def data_status(http: aiohttp.ClientSession, app: App) -> int:
    async with http.get(f"{base(app)}/admin/data.json", allow_redirects=False) as answer:
        return answer.status


async def current_mode(app: App) -> tuple[PlanMode, str]:
    assert app.generations is not None
    return await app.generations.mode()


async def test_nothing_is_shown_without_a_login(
    make_app: AppFactory, browser_like: aiohttp.ClientSession
) -> None:
    app = await make_app()
    async with browser_like.get(f"{base(app)}/admin", allow_redirects=False) as home:
        assert home.status == 303 and home.headers["Location"] == "/admin/login"
    async with browser_like.get(f"{base(app)}/admin/login") as login_page:
        assert login_page.status == 200
        assert 'type="password"' in await login_page.text()
    async with browser_like.get(f"{base(app)}/admin/data.json") as data:
        assert data.status == 401
        assert await data.json() == {"error": "log in at /admin/login"}
    # A form posted without a session changes nothing and is sent to the login page.
    switch = await post_form(browser_like, app, "/admin/plan", {"mode": "b", "csrf_token": "x"})
    assert switch.status == 303 and switch.headers["Location"] == "/admin/login"
    assert await current_mode(app) == (PlanMode.auto, "env")


async def test_a_login_gives_a_strict_session_cookie_and_the_page(
    make_app: AppFactory, browser_like: aiohttp.ClientSession
) -> None:
    app = await make_app()
    wrong = await post_form(browser_like, app, "/admin/login", {"password": API_TOKEN + "x"})
    assert wrong.status == 401 and "Set-Cookie" not in wrong.headers
    right = await post_form(browser_like, app, "/admin/login", {"password": API_TOKEN})
    assert right.status == 303 and right.headers["Location"] == "/admin"
    cookie = SimpleCookie(right.headers["Set-Cookie"])[SESSION_COOKIE]
    assert len(cookie.value) >= 40  # a random token, not anything derived from the password
    assert API_TOKEN not in right.headers["Set-Cookie"]
    assert cookie["httponly"] is True
    assert cookie["samesite"] == "Strict"
    assert cookie["path"] == "/admin"
    assert int(cookie["max-age"]) == SESSION_SECONDS
    assert not cookie["secure"]  # this request came over plain http
    async with browser_like.get(f"{base(app)}/admin") as page:
        shown = await page.text()
        assert page.status == 200
        assert "Plan for new work" in shown and 'id="table-figures"' in shown
    async with browser_like.get(f"{base(app)}/admin/data.json") as data:
        body = await data.json()
    assert body["state"]["mode"] == "auto" and body["state"]["plan"] == "B"  # no Redis in this test
    assert set(body["tables"]) == {"figures", "providers", "generations", "orders"}


async def test_the_cookie_is_secure_behind_a_tls_proxy(
    make_app: AppFactory, browser_like: aiohttp.ClientSession
) -> None:
    app = await make_app()
    async with browser_like.post(
        f"{base(app)}/admin/login",
        data={"password": API_TOKEN},
        headers={"X-Forwarded-Proto": "https"},
        allow_redirects=False,
    ) as answer:
        assert answer.status == 303
        assert SimpleCookie(answer.headers["Set-Cookie"])[SESSION_COOKIE]["secure"] is True


async def test_dashboard_password_replaces_the_api_token(
    make_app: AppFactory, browser_like: aiohttp.ClientSession
) -> None:
    app = await make_app(dashboard_password=DASHBOARD_PASSWORD)
    refused = await post_form(browser_like, app, "/admin/login", {"password": API_TOKEN})
    assert refused.status == 401
    await log_in(browser_like, app, DASHBOARD_PASSWORD)
    assert await data_status(browser_like, app) == 200


async def test_without_any_password_the_dashboard_is_off(
    make_app: AppFactory, browser_like: aiohttp.ClientSession
) -> None:
    app = await make_app(api_token=None)
    async with browser_like.get(f"{base(app)}/admin") as home:
        assert home.status == 503
        assert "The dashboard is off" in await home.text()
    login = await post_form(browser_like, app, "/admin/login", {"password": ""})
    assert login.status == 503 and "Set-Cookie" not in login.headers
    assert await data_status(browser_like, app) == 503


async def test_forms_need_the_csrf_token_of_their_session(
    make_app: AppFactory, browser_like: aiohttp.ClientSession
) -> None:
    app = await make_app()
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as other_browser:
        others_token = await log_in(other_browser, app)
    token = await log_in(browser_like, app)
    assert token != others_token
    for forged in [{}, {"csrf_token": ""}, {"csrf_token": token + "x"}, {"csrf_token": others_token}]:
        answer = await post_form(browser_like, app, "/admin/plan", {"mode": "b", **forged})
        assert answer.status == 403, forged
        share = await post_form(browser_like, app, "/admin/share", {"percent": "50", **forged})
        assert share.status == 403, forged
        logout = await post_form(browser_like, app, "/admin/logout", forged)
        assert logout.status == 403, forged
    assert await current_mode(app) == (PlanMode.auto, "env")
    assert app.generations is not None
    assert await app.generations.plan_b_share() == (0, "env")
    assert await data_status(browser_like, app) == 200  # the forged logout ended nothing

    switched = await post_form(browser_like, app, "/admin/plan", {"mode": "b", "csrf_token": token})
    assert switched.status == 303 and switched.headers["Location"] == "/admin?notice=mode"
    assert await current_mode(app) == (PlanMode.b, "/plan")
    shared = await post_form(browser_like, app, "/admin/share", {"percent": "30", "csrf_token": token})
    assert shared.status == 303 and shared.headers["Location"] == "/admin?notice=share"
    assert await app.generations.plan_b_share() == (30, "/ab")


async def test_bad_form_values_change_nothing(
    make_app: AppFactory, browser_like: aiohttp.ClientSession
) -> None:
    app = await make_app()
    token = await log_in(browser_like, app)
    for mode in ["", "c", "B ", "<b>"]:
        answer = await post_form(browser_like, app, "/admin/plan", {"mode": mode, "csrf_token": token})
        assert answer.headers["Location"] == "/admin?notice=bad-mode"
    for percent in ["", "-1", "101", "5.5", "١٠"]:
        answer = await post_form(browser_like, app, "/admin/share", {"percent": percent, "csrf_token": token})
        assert answer.headers["Location"] == "/admin?notice=bad-share"
    assert app.generations is not None
    assert await current_mode(app) == (PlanMode.auto, "env")
    assert await app.generations.plan_b_share() == (0, "env")
    async with browser_like.get(f"{base(app)}/admin?notice=bad-share") as page:
        assert "The share is a whole percent from 0 to 100." in await page.text()


async def test_logout_ends_the_session_for_good(
    make_app: AppFactory, browser_like: aiohttp.ClientSession
) -> None:
    app = await make_app()
    token = await log_in(browser_like, app)
    [stolen] = [cookie.value for cookie in browser_like.cookie_jar if cookie.key == SESSION_COOKIE]
    answer = await post_form(browser_like, app, "/admin/logout", {"csrf_token": token})
    assert answer.status == 303 and answer.headers["Location"] == "/admin/login"
    cleared = SimpleCookie(answer.headers["Set-Cookie"])[SESSION_COOKIE]
    assert cleared.value == "" and cleared["max-age"] == "0" and cleared["path"] == "/admin"
    assert await data_status(browser_like, app) == 401
    # The same cookie sent again (kept by someone who copied it) opens nothing either.
    async with aiohttp.ClientSession(cookies={SESSION_COOKIE: stolen}) as replay:
        assert await data_status(replay, app) == 401


async def test_wrong_passwords_are_bounded_per_client_address(
    make_app: AppFactory, browser_like: aiohttp.ClientSession
) -> None:
    app = await make_app()
    for _ in range(FAILED_LOGINS_ALLOWED):
        answer = await post_form(browser_like, app, "/admin/login", {"password": "guess"})
        assert answer.status == 401
    # Past the bound even the right password is refused: a guesser learns nothing from the answers.
    limited = await post_form(browser_like, app, "/admin/login", {"password": API_TOKEN})
    assert limited.status == 429 and "Set-Cookie" not in limited.headers
    assert 1 <= int(limited.headers["Retry-After"]) <= 60
    # Another address (127.0.0.2 reaches the loopback server too) is not bounded by this one's guesses.
    connector = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
    async with aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.CookieJar(unsafe=True)) as other:
        await log_in(other, app)
        assert await data_status(other, app) == 200


async def test_every_admin_answer_is_uncached_with_a_self_only_policy(
    make_app: AppFactory, browser_like: aiohttp.ClientSession
) -> None:
    app = await make_app()
    answers: list[aiohttp.ClientResponse] = []
    for path in [
        "/admin",
        "/admin/login",
        "/admin/data.json",
        "/admin/static/dashboard.js",
        "/admin/nowhere",
    ]:
        async with browser_like.get(f"{base(app)}{path}", allow_redirects=False) as answer:
            answers.append(answer)
    answers.append(await post_form(browser_like, app, "/admin/login", {"password": "wrong"}))
    answers.append(await post_form(browser_like, app, "/admin/plan", {"mode": "a"}))
    token = await log_in(browser_like, app)
    for path in ["/admin", "/admin/data.json", "/admin/static/dashboard.css"]:
        async with browser_like.get(f"{base(app)}{path}", allow_redirects=False) as answer:
            answers.append(answer)
    answers.append(await post_form(browser_like, app, "/admin/plan", {"mode": "a"}))  # no token: 403
    answers.append(await post_form(browser_like, app, "/admin/logout", {"csrf_token": token}))
    assert {answer.status for answer in answers} == {200, 303, 401, 403, 404}
    for answer in answers:
        where = f"{answer.method} {answer.url.path} ({answer.status})"
        assert answer.headers["Cache-Control"] == "no-store", where
        policy = answer.headers["Content-Security-Policy"]
        assert "default-src 'none'" in policy and "script-src 'self'" in policy, where
        assert "frame-ancestors 'none'" in policy and "'unsafe-inline'" not in policy, where
        assert answer.headers["X-Content-Type-Options"] == "nosniff", where
    # Other routes keep their own caching rules.
    async with browser_like.get(f"{base(app)}/livez") as livez:
        assert "Content-Security-Policy" not in livez.headers


async def test_what_users_and_providers_wrote_is_shown_as_text(
    make_app: AppFactory, browser_like: aiohttp.ClientSession, replicate: FakeReplicate, database_url: str
) -> None:
    """On both databases: this page reads every query of the dashboard, with rows in each."""
    app = await make_app(database_url=database_url)
    prompt = '<img src=x onerror="alert(1)">'
    error = "<script>alert('error')</script>"
    replicate.script(FLUX, Outcome(status="failed", error=error))
    async with browser_like.post(
        f"{base(app)}/api/generation/text-to-image",
        json={"telegram_id": USER, "bot_name": "image_bot", "prompt": prompt},
        headers={"Authorization": f"Bearer {API_TOKEN}"},
    ) as created:
        assert created.status == 202
    [failed] = await all_settled(app, 1)
    assert failed.status == "failed" and error in (failed.error or "")
    # What no request can carry (a model outside the catalogue, an odd package) but a database may.
    model = '"><svg onload=alert(2)>'
    package = "</td><script>alert(3)</script>"
    assert app.services is not None
    async with app.services.db.transaction() as session:
        user_id = await session.scalar(select(Generation.user_id).where(Generation.id == failed.id))
        assert user_id is not None
        session.add(
            Generation(
                request_key="dashboard-escaping",
                kind="text_to_image",
                user_id=user_id,
                bot_name="image_bot",
                model=model,
                request={"prompt": "plain"},
                plan="B",
                status="queued",
            )
        )
        session.add(
            Order(
                id="o" * 32,
                user_id=user_id,
                bot_name="image_bot",
                telegram_id=USER,
                package=package,
                stars=10,
                amount=10,
                status=OrderStatus.paid,
            )
        )
    await log_in(browser_like, app)
    async with browser_like.get(f"{base(app)}/admin") as page:
        shown = await page.text()
    for raw in [prompt, error, model, package]:
        assert raw not in shown
    assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in shown
    assert "&lt;script&gt;alert(&#x27;error&#x27;)&lt;/script&gt;" in shown
    assert "&quot;&gt;&lt;svg onload=alert(2)&gt;" in shown
    assert "&lt;/td&gt;&lt;script&gt;alert(3)&lt;/script&gt;" in shown
    assert shown.count("<script") == 1  # the page's own script tag, nothing else
    # The JSON carries them as they are (the page's script sets them as text, never as HTML).
    async with browser_like.get(f"{base(app)}/admin/data.json") as data:
        assert data.content_type == "application/json"
        tables = (await data.json())["tables"]
    rows = tables["generations"]["rows"]
    assert any(prompt in row for row in rows) and any(model in row for row in rows)
    # The failure is counted, by its reason, per plan and kind and at its provider.
    by_plan_and_kind = {(row[0], row[1]): row for row in tables["figures"]["rows"]}
    assert by_plan_and_kind["B", "text_to_image"][2:8] == ["2", "0", "1", "0", "1", "0.0 %"]
    assert by_plan_and_kind["B", "text_to_image"][10] == "ProviderFailed: 1"
    assert by_plan_and_kind["A", "all kinds"][2] == "0"
    providers = {row[0]: row for row in tables["providers"]["rows"]}
    assert providers["replicate"][1:7] == ["1", "0", "1", "0", "0", "ProviderFailed: 1"]
    assert providers["elevenlabs"][1] == "0"
    [order] = tables["orders"]["rows"]
    assert order[1:9] == ["o" * 32, "image_bot", str(USER), package, "10", "10", "paid", "0"]


async def test_a_hung_redis_does_not_hang_the_dashboard(
    make_app: AppFactory, browser_like: aiohttp.ClientSession, redis_proxy: TcpProxy, redis_url: str
) -> None:
    app = await make_app(redis_url=f"{redis_proxy.url}/{redis_url.rsplit('/', 1)[1]}")
    await log_in(browser_like, app)
    async with browser_like.get(f"{base(app)}/admin/data.json") as data:
        state = (await data.json())["state"]
    # The depth counts every job in arq's queue, the embedded worker's cron jobs among them.
    assert (state["queue"], state["plan"]) == (True, "A") and isinstance(state["queue_depth"], int)

    await redis_proxy.hang()
    started = asyncio.get_running_loop().time()
    async with browser_like.get(f"{base(app)}/admin/data.json") as data:
        assert data.status == 200
        body = await data.json()
    # The questions to the queue are asked together, and wait REDIS_TIMEOUT (1 s here) at most.
    assert asyncio.get_running_loop().time() - started < 2.5
    assert (body["state"]["queue"], body["state"]["queue_depth"]) == (False, None)
    assert body["state"]["plan"] == "B"  # a queue that does not answer means Plan B for new work
    assert body["facts"]["queue"] == "does not answer" and body["facts"]["queue-depth"] == "—"
    await redis_proxy.restore()
