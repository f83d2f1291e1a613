"""The one place configuration is read: environment variables and `.env` (SPEC §3).

Every value is validated at start; a bad one stops the process with a message that names the variable
and says what is wrong, never echoing a secret back.
"""

from __future__ import annotations

import re
from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

# A Telegram bot token: "<bot id>:<35 url-safe characters>"; tests use shorter secrets, so accept 20+.
BOT_TOKEN_SHAPE = re.compile(r"^\d{3,20}:[A-Za-z0-9_-]{20,}$")
BOT_NAME_SHAPE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class BotMode(StrEnum):
    polling = "polling"
    webhook = "webhook"


class LogFormat(StrEnum):
    text = "text"
    json = "json"


# The web chat's bot's name (bot/web_chat): its users and generations are recorded under it.
WEB_CHAT_BOT_NAME = "web"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", frozen=True)

    bot_tokens: Annotated[dict[str, SecretStr], NoDecode] = Field(default_factory=dict)
    telegram_api_url: str = "https://api.telegram.org"
    bot_mode: BotMode = BotMode.polling
    webhook_base_url: str | None = None
    webhook_secret: SecretStr | None = None
    admin_ids: Annotated[list[int], NoDecode] = Field(default_factory=list)

    database_url: str = "sqlite+aiosqlite:///./aibot.db"
    # PostgreSQL: connections each process keeps open (and up to 20 more at a peak, closed after it).
    # A burst holds many at once; below that, each peak opens and closes connections, and every
    # statement is prepared again on each new one (bench/hot_path.py counts them).
    database_pool_size: int = Field(default=30, ge=1, le=1000)
    redis_url: str = "redis://localhost:6379/0"
    # Redis behind Sentinel: the sentinels to ask for the master ("host:port,host:port"; port 26379 when
    # left out). REDIS_URL then gives the scheme (rediss:// for TLS to the master), the password and the
    # database only; its host is not used.
    redis_sentinels: Annotated[list[tuple[str, int]], NoDecode] = Field(default_factory=list)
    redis_sentinel_master: str = "mymaster"
    # A PEM bundle of the CA that signed a rediss:// server's certificate, when it is not a public one.
    redis_tls_ca_file: str | None = None
    use_queue: bool = True
    fallback_mode: bool = False

    replicate_api_token: SecretStr | None = None
    replicate_base_url: str = "https://api.replicate.com"
    replicate_webhook_secret: SecretStr | None = None
    replicate_poll_interval: float = Field(default=1.0, gt=0, le=60)
    # Seconds a provider API call may take; a create that times out is looked for before a new one.
    provider_timeout: float = Field(default=30.0, gt=0, le=300)

    elevenlabs_api_key: SecretStr | None = None
    elevenlabs_base_url: str = "https://api.elevenlabs.io"

    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8080, ge=0, le=65535)
    api_token: SecretStr | None = None
    # GET /metrics (both servers: `aibot run`'s and `aibot worker`'s probes port) is open like /healthz;
    # set this and it asks for `Authorization: Bearer <token>` instead.
    metrics_token: SecretStr | None = None
    # The admin dashboard's password (/admin); without it API_TOKEN is the password, without both the
    # dashboard is off.
    dashboard_password: SecretStr | None = None
    # The web chat (/chat): the same bot in a browser. Unset: on when no bot token is set and the HTTP
    # server binds to loopback only; a server bound beyond loopback serves it only with WEB_CHAT=true.
    web_chat: bool | None = None

    new_user_bonus: int = Field(default=0, ge=0)
    log_format: LogFormat = LogFormat.text
    log_level: str = "INFO"

    # Plan A tuning (beyond SPEC §3).
    redis_timeout: float = Field(default=1.0, gt=0, le=30, description="seconds an enqueue may take")
    breaker_cooldown: float = Field(default=10.0, gt=0, description="seconds on Plan B before a probe")
    # The A/B test: in `auto` mode this % of new generations (by a hash of their id) go to Plan B;
    # `/ab <0-100>` overrides it at run time.
    plan_b_share: int = Field(default=0, ge=0, le=100, description="% of new generations sent to Plan B")
    # Kept short: arq marks a running job for this + 10 s, and a try waits on a provider only
    # JOB_WAIT_BUDGET seconds before it frees the worker anyway.
    job_timeout: int = Field(default=120, ge=2, description="seconds one run of a job may take")
    job_max_tries: int = Field(default=5, ge=1, le=50)
    retry_backoff_base: float = Field(default=1.0, gt=0, description="seconds before the 2nd try")
    retry_backoff_cap: float = Field(default=60.0, gt=0, description="longest pause between tries")
    retry_jitter: float = Field(default=0.2, ge=0, le=1, description="± share of the pause, at random")
    # A runner renews its claim on a generation every third of this; one that died is taken over after it.
    lease_seconds: float = Field(default=30.0, ge=0.5, le=600)
    reconcile_every: int = Field(default=30, description="seconds between reconciler runs", ge=1, le=60)
    # A generation this fresh may still be on its way into Redis: the reconciler leaves it alone.
    reconcile_grace: float = Field(default=10.0, ge=0)
    # Concurrency limits (both plans): generations in flight (waits included) per user, per provider
    # and overall, and provider creates per minute. Over a limit a generation waits its turn in line,
    # without failing, polling or holding a worker. Replicate limits creates (600 a minute), not
    # predictions running at once, and a generation waiting on a long prediction costs nothing, so
    # its cap is high; ElevenLabs limits concurrent requests by plan (10 on Pro).
    limit_per_user: int = Field(default=2, ge=1)
    limit_overall: int = Field(default=2000, ge=1)
    limit_replicate: int = Field(default=1000, ge=1)
    limit_elevenlabs: int = Field(default=10, ge=1)
    replicate_creates_per_minute: int = Field(default=600, ge=1)
    embedded_worker: bool = Field(default=True, description="`aibot run` runs an arq worker inside")
    worker_max_jobs: int = Field(default=50, ge=1)
    worker_poll_delay: float = Field(default=0.02, gt=0, le=5)
    # Longest a generation may wait on the provider before it is failed and refunded.
    generation_deadline: float = Field(default=900.0, gt=0)
    training_deadline: float = Field(default=4 * 3600.0, gt=0)
    # Plan A waits on a provider inside a job this long, then frees the worker slot and looks again
    # after about `long_wait_poll` seconds (spread ±50 %; sooner when a webhook arrives). Short: a job
    # polling a slow prediction holds one of WORKER_MAX_JOBS slots that others could use meanwhile.
    job_wait_budget: float = Field(default=5.0, gt=0)
    long_wait_poll: float = Field(default=15.0, gt=0)

    # Graceful stop (SIGTERM, SIGINT): a process takes no new work at once and lets running
    # generations finish for up to this many seconds; the rest are then handed back (leases released,
    # Plan A jobs put back in the queue) and the process exits within a few more seconds. Kept under
    # an orchestrator's grace period (Kubernetes: 30 s). A second signal cuts the drain short.
    drain_timeout: float = Field(default=25.0, ge=0, le=3600)
    # `aibot worker`: the port of its small HTTP server answering GET /livez, /readyz and /metrics on
    # HTTP_HOST (0: none).
    worker_http_port: int = Field(default=0, ge=0, le=65535)

    # Payments in Telegram Stars: the texts /paysupport and /terms answer (Telegram requires both of a
    # bot that sells for Stars). The packages and their prices live in the catalogue.
    paysupport_text: str = Field(
        default="For help with a payment, write to the bot's operator; a refund is possible for "
        "stars you have not spent. Quote the payment id from /balance.",
        min_length=1,
        max_length=4000,
    )
    terms_text: str = Field(
        default="Stars buy AI generations in this bot. A generation that fails or is cancelled is "
        "refunded in stars. Unspent stars may be refunded on request through /paysupport.",
        min_length=1,
        max_length=4000,
    )
    # Seconds between two reads of each bot's Star transactions, to credit a payment whose update was
    # lost (a crash) and announce credits that were never announced.
    payment_reconcile_every: float = Field(default=300.0, gt=0)
    # Anti-flood at the door: at most this many requests per user in FLOOD_WINDOW seconds; more are
    # answered "slow down" before anything is charged or called.
    flood_limit: int = Field(default=20, ge=1)
    flood_window: float = Field(default=60.0, gt=0)
    # The fewest seconds between two edits of one chat's status message (Telegram allows about one
    # message a second per chat; edits beyond that earn a 429).
    progress_edit_interval: float = Field(default=3.0, ge=0)
    # The most status edits per second each bot makes over all its chats (0: no bound). Telegram lets
    # a bot send about 30 messages a second in all; results and first statuses need the rest, and
    # when thousands wait, their places in line are not worth a flood of edits.
    progress_edits_per_second: float = Field(default=20.0, ge=0)
    # The most Telegram updates a process handles at once. In webhook mode it is also the
    # max_connections Telegram is given, and an update is answered only once handled (recorded and
    # charged): past the bound the process answers 503 and Telegram delivers it again later, so a
    # burst slows answers instead of piling up in memory. In polling mode no more are fetched.
    updates_in_flight: int = Field(default=40, ge=1, le=100)
    # Fetches of user-given URLs (a training's zip_url, a recording's audio_url): the longest one may take
    # in all (redirects and a trickling body included), how many run at once in a process (each may
    # hold a temporary file up to its size cap), and whether loopback and private addresses may be
    # reached (tests and local development only: in production that is the server's own network).
    fetch_timeout: float = Field(default=30.0, gt=0, le=600)
    fetch_concurrency: int = Field(default=8, ge=1, le=1000)
    fetch_allow_private: bool = False
    # Alerts to the admins (generation/alerts.py): looked for every ALERT_CHECK_EVERY seconds; failures
    # alerted when more than ALERT_FAILURE_RATE of the generations that ended in the last ALERT_WINDOW
    # minutes failed (with at least ALERT_MIN_GENERATIONS ended); the queue when over ALERT_QUEUE_DEPTH
    # jobs. One alert is told again at most every ALERT_REPEAT_AFTER minutes, over every process.
    alert_check_every: float = Field(default=60.0, gt=0, le=3600)
    alert_window: float = Field(default=15.0, gt=0, le=24 * 60)
    alert_failure_rate: float = Field(default=0.5, ge=0, lt=1)
    alert_min_generations: int = Field(default=10, ge=1)
    alert_queue_depth: int = Field(default=500, ge=1)
    alert_repeat_after: float = Field(default=30.0, ge=0)

    @field_validator("bot_tokens", mode="before")
    @classmethod
    def _parse_bot_tokens(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = _json_value("BOT_TOKENS", value, 'a JSON object {"bot_name": "token"}')
        if not isinstance(value, dict):
            raise ValueError('must be a JSON object {"bot_name": "token", ...}')
        for name, token in value.items():
            if not BOT_NAME_SHAPE.match(str(name)):
                raise ValueError(f"bot name {name!r} must be 1-64 letters, digits, '_' or '-'")
            raw = token.get_secret_value() if isinstance(token, SecretStr) else token
            if not isinstance(raw, str) or not BOT_TOKEN_SHAPE.match(raw):
                # The token itself is a secret: name the bot, never print the value.
                raise ValueError(f"the token of bot {name!r} is not of the shape '<digits>:<secret>'")
        return value

    @field_validator("admin_ids", mode="before")
    @classmethod
    def _parse_admin_ids(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = _json_value("ADMIN_IDS", value, "a JSON list of Telegram user ids, e.g. [123, 456]")
        if not isinstance(value, list) or not all(isinstance(item, int) for item in value):
            raise ValueError("must be a JSON list of integer Telegram user ids, e.g. [123, 456]")
        return value

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str) -> str:
        if not (value.startswith("sqlite+aiosqlite://") or value.startswith("postgresql+asyncpg://")):
            raise ValueError("must be an async SQLAlchemy URL: sqlite+aiosqlite:// or postgresql+asyncpg://")
        return value

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str) -> str:
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        # Checked here because arq would only fail at the first connection; the URL may hold a
        # password, so the messages never quote it.
        address = urlsplit(value)
        try:
            _ = address.port
        except ValueError:
            raise ValueError("has a port that is not a number from 1 to 65535") from None
        database = address.path.lstrip("/")
        if address.scheme != "unix" and database and not database.isdigit():
            raise ValueError("must end with the database number, e.g. redis://host:6379/0")
        return value

    @field_validator("redis_sentinels", mode="before")
    @classmethod
    def _parse_redis_sentinels(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        return [_sentinel_address(entry) for entry in value.split(",") if entry.strip()]

    @field_validator("redis_sentinel_master")
    @classmethod
    def _check_redis_sentinel_master(cls, value: str) -> str:
        if not value or any(character.isspace() for character in value):
            raise ValueError("must be the master's name as the sentinels know it, without spaces")
        return value

    @field_validator("redis_tls_ca_file")
    @classmethod
    def _check_redis_tls_ca_file(cls, value: str | None) -> str | None:
        if value and not Path(value).is_file():
            raise ValueError(f"no such file: {value}")
        return value or None

    @field_validator("telegram_api_url", "replicate_base_url", "elevenlabs_base_url", "webhook_base_url")
    @classmethod
    def _check_http_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/")

    @field_validator("log_level")
    @classmethod
    def _check_log_level(cls, value: str) -> str:
        level = value.upper()
        if level not in {"TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR")
        return level

    @model_validator(mode="after")
    def _check_redis_connection(self) -> Settings:
        if self.redis_sentinels and self.redis_url.startswith("unix://"):
            raise ValueError("REDIS_SENTINELS needs REDIS_URL to be redis:// or rediss://, not unix://")
        if self.redis_tls_ca_file and not self.redis_url.startswith("rediss://"):
            raise ValueError("REDIS_TLS_CA_FILE is used only with TLS: make REDIS_URL rediss://")
        if self.redis_tls_ca_file and self.redis_sentinels:
            # arq hands Sentinel no CA file: say so rather than connect without the one asked for.
            raise ValueError(
                "REDIS_TLS_CA_FILE cannot be used with REDIS_SENTINELS (arq passes no CA through "
                "Sentinel): add the CA to the system's trust store instead"
            )
        return self

    @model_validator(mode="after")
    def _check_webhook_mode(self) -> Settings:
        if self.bot_mode is BotMode.webhook and self.bot_tokens:
            if not self.webhook_base_url:
                raise ValueError("BOT_MODE=webhook needs WEBHOOK_BASE_URL (the public base of the server)")
            if not self.webhook_secret:
                raise ValueError("BOT_MODE=webhook needs WEBHOOK_SECRET (checked on every update)")
        return self

    @property
    def bot_names(self) -> set[str]:
        """Every bot this deployment answers through: the Telegram ones, and the web chat's."""
        return set(self.bot_tokens) | ({WEB_CHAT_BOT_NAME} if self.web_chat_enabled else set())

    @property
    def web_chat_enabled(self) -> bool:
        if self.web_chat is not None:
            return self.web_chat
        loopback = self.http_host in {"localhost", "::1"} or self.http_host.startswith("127.")
        return not self.bot_tokens and loopback

    @property
    def default_bot_name(self) -> str | None:
        return next(iter(self.bot_tokens), None)

    @property
    def provider_limits(self) -> dict[str, int]:
        """Generations in flight per provider, for both plans' limiters."""
        return {"replicate": self.limit_replicate, "elevenlabs": self.limit_elevenlabs}

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


def _sentinel_address(entry: str) -> tuple[str, int]:
    """'host:port', '[ipv6]:port' or a bare host (Sentinel's usual port, 26379)."""
    problem = ValueError(f"{entry.strip()!r} is not host:port (a comma-separated list of sentinels)")
    try:
        address = urlsplit("//" + entry.strip())
        port = 26379 if address.port is None else address.port
    except ValueError:  # a port that is not a number or above 65535, an unclosed '['
        raise problem from None
    if not address.hostname or port == 0 or address.username or address.path or address.query:
        raise problem
    return address.hostname, port


def _json_value(variable: str, raw: str, expected: str) -> Any:
    import json

    try:
        return json.loads(raw)
    except json.JSONDecodeError as error:
        raise ValueError(
            f"is not valid JSON ({error.msg} at character {error.pos}); expected {expected}"
        ) from None


class SettingsError(Exception):
    """Configuration is invalid; the message lists each bad variable, without secret values."""


def load_settings(**overrides: Any) -> Settings:
    try:
        return Settings(**overrides)
    except ValidationError as error:
        problems = []
        for item in error.errors():
            variable = "_".join(str(part) for part in item["loc"][:1]).upper() or "settings"
            problems.append(f"{variable}: {item['msg'].removeprefix('Value error, ')}")
        raise SettingsError("invalid configuration:\n  " + "\n  ".join(problems)) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()
