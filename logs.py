"""Logging with loguru: text or JSON lines, standard `logging` (aiogram, arq, aiohttp) routed in, and
every known secret masked before a line is written."""

from __future__ import annotations

import logging
import sys
from typing import Any

from loguru import logger

from settings import LogFormat, Settings

MASK = "***"


def secrets_of(settings: Settings) -> list[str]:
    values = [token.get_secret_value() for token in settings.bot_tokens.values()]
    for secret in (
        settings.api_token,
        settings.replicate_api_token,
        settings.replicate_webhook_secret,
        settings.elevenlabs_api_key,
        settings.webhook_secret,
    ):
        if secret is not None:
            values.append(secret.get_secret_value())
    # A bot token's secret half alone is enough to leak it; mask it wherever it appears.
    values += [value.split(":", 1)[1] for value in list(values) if ":" in value]
    return sorted({value for value in values if len(value) >= 6}, key=len, reverse=True)


def redact(message: str, secrets: list[str]) -> str:
    for secret in secrets:
        if secret in message:
            message = message.replace(secret, MASK)
    return message


class _InterceptHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        try:
            level: str | int = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        logger.opt(depth=6, exception=record.exc_info).log(level, record.getMessage())


def _text_format(record: Any) -> str:
    # The generation's id, kind, plan and user ride in `extra`; show them only when there are some.
    context = " ".join(f"{key}={value}" for key, value in record["extra"].items())
    line = "<green>{time:YYYY-MM-DD HH:mm:ss.SSS}</green> <level>{level: <7}</level> {message}"
    return line + (f" <dim>[{context}]</dim>" if context else "") + "\n{exception}"


def configure_logging(settings: Settings) -> None:
    secrets = secrets_of(settings)

    def patch(record: Any) -> None:
        record["message"] = redact(record["message"], secrets)
        if record["exception"] is not None:
            # Tracebacks are formatted later; mask the exception's text too.
            exc_type, value, traceback = record["exception"]
            if value is not None and any(secret in str(value) for secret in secrets):
                record["exception"] = type(record["exception"])(exc_type, exc_type(MASK), traceback)

    logger.remove()
    logger.configure(patcher=patch)
    # diagnose=False: loguru would otherwise print every variable of a traceback's frames, and a
    # bot's token or a Telegram file URL may be among them.
    if settings.log_format is LogFormat.json:
        logger.add(sys.stderr, level=settings.log_level, serialize=True, diagnose=False)
    else:
        logger.add(sys.stderr, level=settings.log_level, format=_text_format, diagnose=False)
    logging.basicConfig(handlers=[_InterceptHandler()], level=logging.INFO, force=True)
    for noisy in ("httpx", "httpcore", "aiosqlite", "sqlalchemy.engine", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
