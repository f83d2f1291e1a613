"""Logging with loguru: text or JSON lines, standard `logging` (aiogram, arq, aiohttp) routed in, and
secrets masked in what is written, never in the objects logged.

Masking works on the rendered text: the formatted line with its traceback (chained causes included),
or each string of a JSON line before it is dumped. Nothing is rebuilt (an exception class may need
more than a message to be built), so masking cannot fail on what it is given. Secrets from settings
are masked wherever they appear; others are recognised by their shape (a bot token in a Telegram
URL, a bearer value, `r8_`/`whsec_`/`sk_` keys, `token=...`). What else reaches sys.stderr (loguru's
report of a handler that failed, which repeats the record; an uncaught exception's traceback) is
masked the same way.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, TextIO, cast
from urllib.parse import urlsplit

from aiohttp.http_exceptions import HttpProcessingError
from loguru import logger

from settings import LogFormat, Settings

if TYPE_CHECKING:
    from loguru import Message, Record

MASK = "***"
# A known secret shorter than this would mask ordinary words wherever they appear.
SHORTEST_KNOWN_SECRET = 6

# What a secret's value may be made of after `name=` or `Name: `: up to a quote, a separator, a bracket
# or a backslash (in JSON text the backslash starts an escape that must stay whole).
_VALUE = r"""([^\s"'\\&,;<>(){}\[\]]+)"""
_QUOTE = r"""\\?["']?"""
_SCHEME = r"(?:(?:bearer|token|basic)\s+)?"
# Headers (and settings-like names) whose value is a secret, written `Name: value` or `name=value`.
_HEADER_NAMES = (
    r"(?:proxy-)?authorization|x-telegram-bot-api-secret-token|secret[_-]token|xi-api-key|x-api-key"
    r"|api[_-]?key"
)
# Parameters whose value is a secret, written `name=value` (query strings, forms) or `"name": "value"`;
# common words, so never matched before a bare colon ("token: expired" is prose).
_PARAM_NAMES = (
    r"token|access[_-]token|api[_-]token|auth[_-]token|refresh[_-]token|password|passwd|secret"
    r"|client[_-]secret"
)

# Secrets the process may not know, by shape. Each alternative has exactly one capturing group: the
# secret; the rest of its match (a name, a prefix) is kept so a line still says what was masked.
SECRET_SHAPES = (
    # A bot token in a Bot API or file URL: /bot<id>:<secret>/getMe, /file/bot<id>:<secret>/photos/1.jpg.
    r"/bot(\d+:[A-Za-z0-9_-]+)",
    # A bot token anywhere else: a real one's secret half is exactly 35 characters (a request key's
    # "<user id>:<32 hex digits>" is not one).
    r"(?<![0-9])(\d{5,20}:[A-Za-z0-9_-]{35})(?![A-Za-z0-9_-])",
    r"(?<![A-Za-z0-9])(r8_[A-Za-z0-9]{8,})",  # Replicate API token
    r"(?<![A-Za-z0-9])(whsec_[A-Za-z0-9+/=]{8,})",  # webhook signing secret
    r"(?<![A-Za-z0-9])(sk_[A-Za-z0-9]{32,})",  # ElevenLabs API key
    rf"(?i:(?<![A-Za-z0-9_-])(?:{_HEADER_NAMES}){_QUOTE}\s*[:=]\s*{_QUOTE}{_SCHEME}){_VALUE}",
    rf"(?i:(?<![A-Za-z0-9_-])(?:{_PARAM_NAMES})=){_VALUE}",
    rf"""(?i:\\?["'](?:{_PARAM_NAMES})\\?["']\s*:\s*{_QUOTE}){_VALUE}""",
    # A bearer value alone (a header's value without its name); one with a digit, unlike prose.
    r"(?i:\bbearer\s+)(?=[A-Za-z0-9._~+/=-]*[0-9])([A-Za-z0-9._~+/=-]{8,})",
    r"""://[^/\s:@'"]*:([^/\s@'"]+)@""",  # a password in a URL: postgresql://user:password@host
)


def secrets_of(settings: Settings) -> list[str]:
    """Every secret in the settings, longest first (a token is masked whole, not only its half)."""
    tokens = [token.get_secret_value() for token in settings.bot_tokens.values()]
    # A bot token's secret half alone is enough to use it; mask it wherever it appears.
    values = tokens + [token.split(":", 1)[1] for token in tokens]
    for secret in (
        settings.api_token,
        settings.replicate_api_token,
        settings.replicate_webhook_secret,
        settings.elevenlabs_api_key,
        settings.webhook_secret,
    ):
        if secret is not None:
            values.append(secret.get_secret_value())
    for url in (settings.database_url, settings.redis_url):
        values.append(_password_in(url) or "")
    return sorted({value for value in values if len(value) >= SHORTEST_KNOWN_SECRET}, key=len, reverse=True)


def _password_in(url: str) -> str | None:
    try:
        return urlsplit(url).password
    except ValueError:  # a port that is not a number: settings report it
        return None


# Every text SECRET_SHAPES can match holds one of these (in lower case) or a bot token's "<digit>:"
# start; a line with none, the common case, skips the shapes' costlier scan.
_SHAPE_HINTS = ("/bot", "r8_", "whsec_", "sk_", "auth", "key", "token", "secret", "passw", "bearer", "://")
_TOKEN_HINT = re.compile(r"[0-9]:[A-Za-z0-9_-]{35}")
_SHAPES = re.compile("|".join(SECRET_SHAPES))


def may_hold_a_shape(text: str) -> bool:
    lowered = text.lower()
    return any(hint in lowered for hint in _SHAPE_HINTS) or _TOKEN_HINT.search(text) is not None


class Redactor:
    """Masks secrets in text: the known ones given (one alternation, longest first, so a token goes
    whole rather than only its half) and then whatever SECRET_SHAPES match (one regex)."""

    def __init__(self, known: Iterable[str] = ()) -> None:
        secrets = sorted({value for value in known if value}, key=len, reverse=True)
        self._known = re.compile("|".join(re.escape(value) for value in secrets)) if secrets else None

    def redact(self, text: str) -> str:
        if self._known is not None:
            text = self._known.sub(MASK, text)
        if may_hold_a_shape(text):
            text = _SHAPES.sub(_mask_secret_group, text)
        return text

    def redact_values(self, value: Any) -> Any:
        """A JSON-ready copy of `value` with every string masked (dict keys too); other objects become
        their text, as json.dumps(default=str) would write them."""
        if isinstance(value, str):
            return self.redact(value)
        if isinstance(value, dict):
            return {self.redact(text_of(key)): self.redact_values(item) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return [self.redact_values(item) for item in value]
        if value is None or isinstance(value, bool | int | float):
            return value
        return self.redact(text_of(value))


def _mask_secret_group(match: re.Match[str]) -> str:
    # Every alternative captures one group, the secret; what it matched around it stays.
    group = match.lastindex or 0
    start, end = match.start(group) - match.start(), match.end(group) - match.start()
    whole = match.group()
    return whole[:start] + MASK + whole[end:]


def text_of(value: object) -> str:
    """str(value), or a placeholder when its __str__ fails: a log line is never lost to a bad object."""
    try:
        return str(value)
    except Exception:
        return f"<{type(value).__name__} that cannot be shown>"


# What configure_logging knows; until then only secrets recognised by shape are masked.
_redactor = Redactor()


def redact(text: str) -> str:
    """`text` with every secret masked, for texts that leave the process other than as a log line (an
    error stored with a generation and shown by the API)."""
    return _redactor.redact(text)


class _MaskedLines:
    """loguru's sink: writes each rendered line masked. A line that cannot be masked is replaced by a
    notice rather than written as it is, and never raises (loguru would then print the record)."""

    def __init__(self, stream: TextIO, *, as_json: bool) -> None:
        self.stream = stream
        self.as_json = as_json

    def write(self, message: Message) -> None:
        try:
            line = _json_line(message) if self.as_json else redact(message)
        except Exception as error:
            notice = f"a log line was withheld: masking it failed ({type(error).__name__})"
            line = (json.dumps({"text": notice}) if self.as_json else notice) + "\n"
        self.stream.write(line)

    def flush(self) -> None:
        self.stream.flush()


def _json_line(message: Message) -> str:
    """The line loguru's serialize=True writes, from masked strings: masking text, not JSON escapes,
    keeps the line valid JSON whatever a secret is made of. Only the fields that carry what was logged
    are masked; the others are the code's own names (file, function, thread)."""
    record: Record = message.record
    exception = record["exception"]
    document = {
        "text": redact(message),
        "record": {
            "elapsed": {"repr": str(record["elapsed"]), "seconds": record["elapsed"].total_seconds()},
            "exception": None
            if exception is None
            else {
                "type": None if exception.type is None else exception.type.__name__,
                "value": None if exception.value is None else redact(text_of(exception.value)),
                "traceback": bool(exception.traceback),
            },
            "extra": _redactor.redact_values(record["extra"]),
            "file": {"name": record["file"].name, "path": record["file"].path},
            "function": record["function"],
            "level": {"icon": record["level"].icon, "name": record["level"].name, "no": record["level"].no},
            "line": record["line"],
            "message": redact(record["message"]),
            "module": record["module"],
            "name": record["name"],
            "process": {"id": record["process"].id, "name": record["process"].name},
            "thread": {"id": record["thread"].id, "name": record["thread"].name},
            "time": {"repr": str(record["time"]), "timestamp": record["time"].timestamp()},
        },
    }
    return json.dumps(document, ensure_ascii=False, default=text_of) + "\n"


class _MaskedStream:
    """Stands in for sys.stderr so that what bypasses loguru's sink is masked too: loguru's report of
    a handler that failed (it repeats the record), logging's handleError, an uncaught exception's
    traceback. Text is held until its line ends, so a secret split over two writes is still seen."""

    HELD_AT_MOST = 64 * 1024

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self._held = ""
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        with self._lock:
            complete, newline, self._held = (self._held + text).rpartition("\n")
            if newline:
                self.stream.write(redact(complete + newline))
            if len(self._held) > self.HELD_AT_MOST:  # a stream of text without a line end
                self.stream.write(redact(self._held))
                self._held = ""
        return len(text)

    def flush(self) -> None:
        with self._lock:
            if self._held:
                self.stream.write(redact(self._held))
                self._held = ""
        self.stream.flush()

    def __getattr__(self, name: str) -> Any:
        # fileno, isatty, encoding...: what faulthandler and others ask of stderr.
        return getattr(self.stream, name)


class _InterceptHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        try:
            level: str | int = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        try:
            message = record.getMessage()
        except Exception:  # arguments that do not fit the format: logging reports it (masked, on stderr)
            self.handleError(record)
            return
        logger.opt(depth=6, exception=record.exc_info).log(level, message)


# The fields of a generation's log context (generation/log_context.py), shown first and in this order
# whichever was set first (an update names its user and bot before its generation exists).
CONTEXT_ORDER = ("generation", "kind", "plan", "user", "bot")
_CONTEXT_RANK = {key: rank for rank, key in enumerate(CONTEXT_ORDER)}


# One template for every line: loguru parses a format function's template for its colours each time
# it sees a new one (it remembers 64), and a template holding the line's own context was new for
# every generation: half of a line's CPU (70 of 150 us). The context goes in as a value instead.
_TEXT_TEMPLATE = (
    "<green>{time:YYYY-MM-DD HH:mm:ss.SSS}</green> <level>{level: <7}</level> {message}<dim>{context}</dim>"
    "\n{exception}"
)


def _text_format(record: Record) -> str:
    # The generation's id, kind, plan, user and bot ride in `extra` (bound, or the task's context);
    # show them only when there are some. Set on the record (loguru fills the template from a copy
    # of it made after this call), not in `extra`, which other sinks see.
    extra = record["extra"]
    ordered = sorted(extra, key=lambda key: _CONTEXT_RANK.get(key, len(CONTEXT_ORDER)))  # a stable sort
    context = " ".join(f"{key}={text_of(extra[key])}" for key in ordered)
    cast(dict[str, Any], record)["context"] = f" [{context}]" if context else ""
    return _TEXT_TEMPLATE


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except Exception:
        return False


def configure_logging(settings: Settings) -> None:
    global _redactor
    _redactor = Redactor(secrets_of(settings))
    stderr = sys.stderr.stream if isinstance(sys.stderr, _MaskedStream) else sys.stderr
    sys.stderr = _MaskedStream(stderr)

    logger.remove()
    # diagnose=False: loguru would otherwise print every variable of a traceback's frames, and a
    # bot's token or a Telegram file URL may be among them.
    if settings.log_format is LogFormat.json:
        logger.add(
            _MaskedLines(stderr, as_json=True), level=settings.log_level, colorize=False, diagnose=False
        )
    else:
        logger.add(
            _MaskedLines(stderr, as_json=False),
            level=settings.log_level,
            format=_text_format,
            colorize=_is_terminal(stderr),
            diagnose=False,
        )
    logging.basicConfig(handlers=[_InterceptHandler()], level=logging.INFO, force=True)
    for noisy in ("httpx", "httpcore", "aiosqlite", "sqlalchemy.engine", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # aiogram's line for every update ("Update id=... is handled. Duration 4 ms") was one of a
    # generation's four lines, and the product's own lines already tell what an update did: kept for
    # DEBUG, where each line's cost is accepted.
    quiet = logger.level(settings.log_level).no > logger.level("DEBUG").no
    logging.getLogger("aiogram.event").setLevel(logging.WARNING if quiet else logging.NOTSET)
    # Likewise arq's lines as each job starts and ends: the product's own ("recorded and enqueued",
    # "done: ..., 4.21s after its record") say the same of a Plan A generation.
    arq_worker = logging.getLogger("arq.worker")
    arq_worker.removeFilter(_job_started_or_ended)
    if quiet:
        arq_worker.addFilter(_job_started_or_ended)
    logging.getLogger("aiohttp.server").addFilter(_malformed_requests_in_one_line)


# arq's formats for a job's start ("0.98s → id:run_generation(...)") and end ("0.08s ← id ● 'done'");
# its other lines (a retry, an abort, a failure, the worker's start and stop) are all kept.
_ARQ_JOB_STARTED_OR_ENDED = frozenset({"%6.2fs → %s(%s)%s", "%6.2fs ← %s ● %s"})


def _job_started_or_ended(record: logging.LogRecord) -> bool:
    """False for arq's line as a job starts or ends (kept at DEBUG only)."""
    return record.msg not in _ARQ_JOB_STARTED_OR_ENDED


def _malformed_requests_in_one_line(record: logging.LogRecord) -> bool:
    """aiohttp logs a request it cannot even parse (bad framing, a header over its limit) at ERROR with
    a traceback of its parser: anyone could fill the log with them. It is the client's fault, so one
    line at INFO, without the traceback; a handler's own error keeps its traceback."""
    error = record.exc_info[1] if record.exc_info else None
    if isinstance(error, HttpProcessingError):
        record.levelno, record.levelname = logging.INFO, "INFO"
        record.msg, record.args = "malformed HTTP request refused: %s", (type(error).__name__,)
        record.exc_info = record.exc_text = None
    return True
