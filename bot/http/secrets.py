"""The secrets HTTP callers prove they hold: compared in constant time, and derived per Telegram bot.

A header is compared as bytes: `hmac.compare_digest` refuses (raises on) two str with non-ASCII
characters, and a caller chooses the header, so a str comparison would let anyone make it fail.
"""

from __future__ import annotations

import hashlib
import hmac

from pydantic import SecretStr

# Telegram sends a bot's webhook secret in this header with every update.
TELEGRAM_WEBHOOK_HEADER = "X-Telegram-Bot-Api-Secret-Token"
# Keeps the key a webhook secret is derived with for this purpose alone.
TELEGRAM_WEBHOOK_PURPOSE = "telegram-webhook:"


def same_secret(given: str, expected: str) -> bool:
    """Whether a caller's secret is the expected one, in time that does not depend on where they differ."""
    # surrogatepass: a header aiohttp could not decode carries surrogates; they still become bytes.
    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), expected.encode("utf-8"))


def telegram_webhook_secret(master: str, bot_name: str) -> str:
    """Bot `bot_name`'s webhook secret, derived from WEBHOOK_SECRET: operators keep one setting, and the
    secret of one bot (Telegram shows it to whoever holds that bot's token) opens no other bot's webhook.
    64 hex characters: within what Telegram allows (1-256 of A-Z a-z 0-9 _ -)."""
    message = (TELEGRAM_WEBHOOK_PURPOSE + bot_name).encode("utf-8", "surrogatepass")
    return hmac.new(master.encode("utf-8"), message, hashlib.sha256).hexdigest()


def has_bearer_token(authorization: str, token: SecretStr | None) -> bool:
    """Whether an Authorization header is `Bearer <token>`; never without a token configured (an empty
    one included: "Bearer " would match it)."""
    scheme, _, given = authorization.partition(" ")
    if token is None or not token.get_secret_value() or scheme.lower() != "bearer":
        return False
    return same_secret(given.strip(), token.get_secret_value())
