"""The dashboard's routes: the page, its JSON, login and logout, and the two forms (plan mode, Plan B
share). Every form that changes something needs the session's CSRF token; every answer of /admin*
carries no-store and a self-only Content-Security-Policy (headers.py)."""

from __future__ import annotations

from dataclasses import dataclass, field

from aiohttp import web
from loguru import logger

from bot.http.dashboard import page
from bot.http.dashboard.auth import (
    COOKIE_PATH,
    SESSION_COOKIE,
    LoginThrottle,
    Session,
    Sessions,
    is_password,
)
from bot.http.dashboard.snapshot import take_snapshot
from bot.http.keys import GENERATIONS, SERVICES
from generation.plan import PlanMode, parse_share

LOGIN_PATH = "/admin/login"
HOME_PATH = "/admin"
CSRF_FIELD = "csrf_token"


@dataclass
class DashboardState:
    password: str | None  # None: the dashboard is off
    sessions: Sessions = field(default_factory=Sessions)
    throttle: LoginThrottle = field(default_factory=LoginThrottle)


DASHBOARD = web.AppKey("dashboard", DashboardState)


def _html(body: str, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(text=body, status=status, content_type="text/html", charset="utf-8", headers=headers)


def _redirect(location: str) -> web.Response:
    # 303: the browser follows a form's POST with a GET, so a reload does not post the form again.
    return web.Response(status=303, headers={"Location": location})


def _off() -> web.Response:
    return _html(page.off_page(), status=503)


def _session(request: web.Request) -> Session | None:
    return request.app[DASHBOARD].sessions.find(request.cookies.get(SESSION_COOKIE))


def _client_address(request: web.Request) -> str:
    # The peer's address: a forwarded header is the client's to write, so it cannot bound anyone.
    return request.remote or "unknown"


def _is_https(request: web.Request) -> bool:
    """Over TLS, here or at a reverse proxy in front (which says so in X-Forwarded-Proto). A client
    that lies about it only makes its own cookie Secure."""
    forwarded = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
    return request.secure or forwarded == "https"


async def home(request: web.Request) -> web.Response:
    state = request.app[DASHBOARD]
    if state.password is None:
        return _off()
    session = _session(request)
    if session is None:
        return _redirect(LOGIN_PATH)
    snapshot = await take_snapshot(request.app[SERVICES], request.app[GENERATIONS])
    return _html(page.dashboard_page(snapshot, session.csrf_token, request.query.get("notice")))


async def data(request: web.Request) -> web.Response:
    state = request.app[DASHBOARD]
    if state.password is None:
        return web.json_response({"error": "the dashboard is off: set DASHBOARD_PASSWORD"}, status=503)
    if _session(request) is None:
        return web.json_response({"error": "log in at /admin/login"}, status=401)
    snapshot = await take_snapshot(request.app[SERVICES], request.app[GENERATIONS])
    return web.json_response(snapshot.as_json())


async def login_form(request: web.Request) -> web.Response:
    state = request.app[DASHBOARD]
    if state.password is None:
        return _off()
    if _session(request) is not None:
        return _redirect(HOME_PATH)
    return _html(page.login_page())


async def login(request: web.Request) -> web.Response:
    """No CSRF token here (there is no session yet to bind one to): a forged login could only log a
    browser in with the password itself, which whoever forges it would then already hold."""
    state = request.app[DASHBOARD]
    if state.password is None:
        return _off()
    address = _client_address(request)
    wait = state.throttle.retry_after(address)
    if wait is not None:
        message = "Too many wrong passwords. Try again in a minute."
        return _html(page.login_page(message), status=429, headers={"Retry-After": str(max(1, round(wait)))})
    form = await request.post()
    given = form.get("password")
    if not isinstance(given, str) or not is_password(given, state.password):
        state.throttle.failed(address)
        logger.warning("dashboard: wrong password from {}", address)
        return _html(page.login_page("Wrong password."), status=401)
    state.throttle.succeeded(address)
    session = state.sessions.start()
    logger.info("dashboard: logged in from {}", address)
    response = _redirect(HOME_PATH)
    response.set_cookie(
        SESSION_COOKIE,
        session.token,
        max_age=int(state.sessions.lifetime),
        path=COOKIE_PATH,
        httponly=True,
        samesite="Strict",
        secure=_is_https(request),
    )
    return response


async def logout(request: web.Request) -> web.Response:
    state = request.app[DASHBOARD]
    session = _session(request)
    if session is not None:
        if (refused := await _refuse_without_csrf(request, session)) is not None:
            return refused
        state.sessions.end(session.token)
    response = _redirect(LOGIN_PATH)
    response.del_cookie(
        SESSION_COOKIE, path=COOKIE_PATH, httponly=True, samesite="Strict", secure=_is_https(request)
    )
    return response


async def switch_plan(request: web.Request) -> web.Response:
    if (refused := await _refuse_form(request)) is not None:
        return refused
    form = await request.post()
    try:
        mode = PlanMode(str(form.get("mode", "")))
    except ValueError:
        return _redirect(f"{HOME_PATH}?notice=bad-mode")
    await request.app[GENERATIONS].set_mode(mode)
    logger.info("dashboard: plan mode set to {} from {}", mode.value, _client_address(request))
    return _redirect(f"{HOME_PATH}?notice=mode")


async def set_share(request: web.Request) -> web.Response:
    if (refused := await _refuse_form(request)) is not None:
        return refused
    form = await request.post()
    percent = parse_share(str(form.get("percent", "")))
    if percent is None:
        return _redirect(f"{HOME_PATH}?notice=bad-share")
    await request.app[GENERATIONS].set_plan_b_share(percent)
    logger.info("dashboard: Plan B share set to {}% from {}", percent, _client_address(request))
    return _redirect(f"{HOME_PATH}?notice=share")


async def _refuse_form(request: web.Request) -> web.Response | None:
    """The answer to a form that changes something sent without a session (the login page) or without
    its session's CSRF token (403); None lets it through."""
    if request.app[DASHBOARD].password is None:
        return _off()
    session = _session(request)
    if session is None:
        return _redirect(LOGIN_PATH)
    return await _refuse_without_csrf(request, session)


async def _refuse_without_csrf(request: web.Request, session: Session) -> web.Response | None:
    form = await request.post()
    given = form.get(CSRF_FIELD)
    if isinstance(given, str) and session.accepts_csrf(given):
        return None
    logger.warning("dashboard: a form without the session's CSRF token from {}", _client_address(request))
    return _html(page.refused_page(), status=403)
