"""The dashboard's sessions and its bound on wrong passwords, on a clock the test moves."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from bot.http.dashboard import auth
from bot.http.dashboard.auth import LoginThrottle, Sessions, dashboard_password, is_password
from settings import load_settings


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_session_ends_when_its_time_is_up_or_at_logout() -> None:
    clock = Clock()
    sessions = Sessions(lifetime=60, clock=clock)
    first, second = sessions.start(), sessions.start()
    assert first.token != second.token and first.csrf_token != second.csrf_token
    assert sessions.find(first.token) == first
    sessions.end(first.token)
    assert sessions.find(first.token) is None
    clock.now += 59
    assert sessions.find(second.token) == second
    clock.now += 1
    assert sessions.find(second.token) is None
    assert sessions.find("") is None and sessions.find(None) is None and sessions.find("made-up") is None


def test_the_oldest_session_makes_room_past_the_cap() -> None:
    sessions = Sessions(clock=Clock())
    started = [sessions.start() for _ in range(auth.MAX_SESSIONS + 1)]
    assert sessions.find(started[0].token) is None
    assert all(sessions.find(session.token) == session for session in started[1:])


def test_a_csrf_token_is_its_sessions_alone() -> None:
    sessions = Sessions(clock=Clock())
    mine, yours = sessions.start(), sessions.start()
    assert mine.accepts_csrf(mine.csrf_token)
    assert not mine.accepts_csrf(yours.csrf_token)
    assert not mine.accepts_csrf("")
    assert not mine.accepts_csrf("é" + mine.csrf_token)  # non-ASCII input is refused, not an error


def test_wrong_passwords_are_bounded_within_the_window() -> None:
    clock = Clock()
    throttle = LoginThrottle(allowed=3, window=60, clock=clock)
    for _ in range(3):
        assert throttle.retry_after("10.0.0.1") is None
        throttle.failed("10.0.0.1")
        clock.now += 10
    assert throttle.retry_after("10.0.0.1") == 30  # the first failure leaves the window in 30 s
    assert throttle.retry_after("10.0.0.2") is None  # per address
    clock.now += 30
    assert throttle.retry_after("10.0.0.1") is None


def test_a_right_password_clears_the_count() -> None:
    throttle = LoginThrottle(allowed=2, window=60, clock=Clock())
    throttle.failed("10.0.0.1")
    throttle.succeeded("10.0.0.1")
    throttle.failed("10.0.0.1")
    assert throttle.retry_after("10.0.0.1") is None


def test_the_remembered_addresses_are_bounded() -> None:
    throttle = LoginThrottle(allowed=1, window=60, clock=Clock())
    for number in range(auth.MAX_TRACKED_ADDRESSES + 1):
        throttle.failed(f"address-{number}")
    assert throttle.retry_after("address-0") is None  # forgotten, the oldest
    assert throttle.retry_after(f"address-{auth.MAX_TRACKED_ADDRESSES}") is not None


def test_the_password_is_dashboard_password_then_api_token_else_none(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("API_TOKEN", "DASHBOARD_PASSWORD"):  # only the values given here count
        monkeypatch.delenv(name, raising=False)
    both = load_settings(_env_file=None, dashboard_password="dash", api_token="api")
    assert dashboard_password(both) == "dash"
    assert dashboard_password(load_settings(_env_file=None, api_token="api")) == "api"
    assert dashboard_password(load_settings(_env_file=None, dashboard_password="", api_token="api")) == "api"
    assert dashboard_password(load_settings(_env_file=None, api_token=SecretStr(""))) is None
    assert dashboard_password(load_settings(_env_file=None)) is None


def test_passwords_compare_whole() -> None:
    assert is_password("secret", "secret")
    assert not is_password("secre", "secret") and not is_password("secrets", "secret")
    assert not is_password("sécret", "secret")
