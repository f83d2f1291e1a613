"""Who may see the dashboard: one password, sessions held by this process, a CSRF token per session and
a bound on wrong passwords per client address.

Sessions are random tokens kept in memory rather than signed cookies: logging out really ends one, a
cookie carries nothing an attacker could test passwords against offline, and the dashboard is served
by the one front process (`aibot run`). A restart logs the operator out, which is the price of that.
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

from pydantic import SecretStr

from bot.http.secrets import same_secret
from settings import Settings

SESSION_COOKIE = "aibot_admin"
COOKIE_PATH = "/admin"
SESSION_SECONDS = 12 * 3600
# Sessions kept at once: a login past it ends the oldest session (each login makes one, so a flood of
# correct logins cannot grow memory without bound).
MAX_SESSIONS = 1000
FAILED_LOGINS_ALLOWED = 5
FAILED_LOGIN_WINDOW = 60.0
# Client addresses whose failures are remembered; past it the oldest address is forgotten.
MAX_TRACKED_ADDRESSES = 10_000

Clock = Callable[[], float]


def dashboard_password(settings: Settings) -> str | None:
    """DASHBOARD_PASSWORD, else API_TOKEN; None (the dashboard is off) without either. An empty value
    counts as unset: it would open the dashboard to anyone."""
    for secret in (settings.dashboard_password, settings.api_token):
        if isinstance(secret, SecretStr) and secret.get_secret_value():
            return secret.get_secret_value()
    return None


def is_password(given: str, expected: str) -> bool:
    """Compared as bytes in constant time (bot/http/secrets.py says why bytes)."""
    return same_secret(given, expected)


@dataclass(frozen=True)
class Session:
    token: str
    csrf_token: str
    expires_at: float

    def accepts_csrf(self, given: str) -> bool:
        return same_secret(given, self.csrf_token)


class Sessions:
    """Logged-in browsers, by their cookie's random token; each ends SESSION_SECONDS after login."""

    def __init__(self, lifetime: float = SESSION_SECONDS, clock: Clock = time.monotonic) -> None:
        self.lifetime = lifetime
        self._clock = clock
        self._by_token: OrderedDict[str, Session] = OrderedDict()  # oldest login first

    def start(self) -> Session:
        self._forget_expired()
        while len(self._by_token) >= MAX_SESSIONS:
            self._by_token.popitem(last=False)
        session = Session(
            token=secrets.token_urlsafe(32),
            csrf_token=secrets.token_urlsafe(32),
            expires_at=self._clock() + self.lifetime,
        )
        self._by_token[session.token] = session
        return session

    def find(self, token: str | None) -> Session | None:
        if not token:
            return None
        session = self._by_token.get(token)
        if session is None:
            return None
        if session.expires_at <= self._clock():
            del self._by_token[token]
            return None
        return session

    def end(self, token: str | None) -> None:
        if token:
            self._by_token.pop(token, None)

    def _forget_expired(self) -> None:
        now = self._clock()
        for token in [token for token, session in self._by_token.items() if session.expires_at <= now]:
            del self._by_token[token]


class LoginThrottle:
    """At most FAILED_LOGINS_ALLOWED wrong passwords per client address in FAILED_LOGIN_WINDOW seconds.
    Past that the address is refused before its password is even looked at: were a right password
    still let in, the refusals would tell a guesser which guess was right."""

    def __init__(
        self,
        allowed: int = FAILED_LOGINS_ALLOWED,
        window: float = FAILED_LOGIN_WINDOW,
        clock: Clock = time.monotonic,
    ) -> None:
        self.allowed = allowed
        self.window = window
        self._clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def retry_after(self, address: str) -> float | None:
        """Seconds until this address may try again, or None if it may now."""
        failures = self._recent(address)
        if len(failures) < self.allowed:
            return None
        return max(0.0, failures[0] + self.window - self._clock())

    def failed(self, address: str) -> None:
        failures = self._recent(address)
        failures.append(self._clock())
        self._failures[address] = failures
        self._failures.move_to_end(address)
        while len(self._failures) > MAX_TRACKED_ADDRESSES:
            self._failures.popitem(last=False)

    def succeeded(self, address: str) -> None:
        self._failures.pop(address, None)

    def _recent(self, address: str) -> deque[float]:
        failures = self._failures.get(address, deque())
        horizon = self._clock() - self.window
        while failures and failures[0] <= horizon:
            failures.popleft()
        if not failures:
            self._failures.pop(address, None)
        return failures
