"""The masking itself: which secrets it finds (known ones, and others by their shape), what it keeps
around them, and that its quick look-ahead never lets a secret through."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from logs import MASK, SECRET_SHAPES, Redactor, may_hold_a_shape, secrets_of
from settings import load_settings

TOKEN = "7012345678:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw8"


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        (
            f"GET https://api.telegram.org/file/bot{TOKEN}/photos/1.jpg",
            "GET https://api.telegram.org/file/bot***/photos/1.jpg",
        ),
        (f"https://api.telegram.org/bot{TOKEN}/getMe", "https://api.telegram.org/bot***/getMe"),
        (f"the token {TOKEN} in prose", "the token *** in prose"),
        ("Authorization: Bearer abcdefghijk123", "Authorization: Bearer ***"),
        ("{'Authorization': 'Token r8_abc', 'Accept': 'x'}", "{'Authorization': 'Token ***', 'Accept': 'x'}"),
        ("sent with bearer eyJhbGciOi.J9x", "sent with bearer ***"),
        ("Replicate said r8_Abcdefgh123 is wrong", "Replicate said *** is wrong"),
        ("{'xi-api-key': 'anything-at-all'}", "{'xi-api-key': '***'}"),
        ("ElevenLabs refused sk_0123456789abcdef0123456789abcdef0123", "ElevenLabs refused ***"),
        ("signed with whsec_dGhpcyBpcyBhIHNlY3JldA==.", "signed with ***."),
        ("X-Telegram-Bot-Api-Secret-Token: s3cr3t-value", "X-Telegram-Bot-Api-Secret-Token: ***"),
        (
            "setWebhook?url=https://x/y&secret_token=abc_def-123&x=1",
            "setWebhook?url=https://x/y&secret_token=***&x=1",
        ),
        ("https://cdn.example/a.png?token=abcdef123&size=2", "https://cdn.example/a.png?token=***&size=2"),
        ("https://cdn.example/a.png?api_key=abcdef123", "https://cdn.example/a.png?api_key=***"),
        ('{"password": "hunter22"}', '{"password": "***"}'),
        ("postgresql+asyncpg://aibot:pa55word@db:5432/aibot", "postgresql+asyncpg://aibot:***@db:5432/aibot"),
        ("redis://:redispass@redis:6379/0", "redis://:***@redis:6379/0"),
    ],
)
def test_secrets_are_found_by_their_shape(text: str, masked: str) -> None:
    assert Redactor().redact(text) == masked


@pytest.mark.parametrize(
    "text",
    [
        "missing or wrong bearer token",
        "token: expired; API_TOKEN: must be set",
        "http:image_bot:123456:0f8fad5bd9cb469fa16570867728950e",  # a request key
        "12:30:45 http://127.0.0.1:8080/x",
        "the author's secret recipe",
    ],
)
def test_ordinary_text_is_left_alone(text: str) -> None:
    assert Redactor().redact(text) == text


def test_known_secrets_are_masked_anywhere_and_a_token_whole() -> None:
    redactor = Redactor(["123456:AAbbCCddEEffGGhhIIjjKK", "AAbbCCddEEffGGhhIIjjKK", "plain.secret"])
    line = "x123456:AAbbCCddEEffGGhhIIjjKKx and AAbbCCddEEffGGhhIIjjKK and plain.secret!"
    assert redactor.redact(line) == "x***x and *** and ***!"


def test_the_settings_secrets_include_token_halves_and_url_passwords() -> None:
    settings = load_settings(
        _env_file=None,
        bot_tokens=f'{{"main": "{TOKEN}"}}',
        api_token="api-secret-value",
        replicate_api_token="r8_abcdefgh",
        replicate_webhook_secret="whsec_c2VjcmV0",
        elevenlabs_api_key="eleven-key",
        webhook_secret="telegram-hook",
        database_url="postgresql+asyncpg://aibot:db-password@db/aibot",
        redis_url="redis://:redis-password@redis:6379/0",
    )
    assert set(secrets_of(settings)) == {
        TOKEN,
        TOKEN.split(":", 1)[1],
        "api-secret-value",
        "r8_abcdefgh",
        "whsec_c2VjcmV0",
        "eleven-key",
        "telegram-hook",
        "db-password",
        "redis-password",
    }


# Texts built like the ones a shape is written for, in any letter case, between random characters.
# Regular expressions ignore case by other rules than str.lower: "İ" lowers to two characters, and the
# Kelvin sign ("\u212a") to "k"; the last names hold them.
NAMES = [
    *("/bot7012345678:", "/file/bot1:", "7012345678:", "r8_", "whsec_", "sk_", "postgresql://user"),
    *("Authorization", "Proxy-Authorization", "X-Telegram-Bot-Api-Secret-Token", "secret_token"),
    *("xi-api-key", "x-api-key", "apikey", "api-key", "token", "access_token", "api-token", "Bearer"),
    *(
        "password",
        "passwd",
        "secret",
        "client_secret",
        "'token'",
        '"password"',
        "AUTHORİZATİON",
        "to\u212aen",
        "xi-api-\u212aey",
    ),
]
SEPARATORS = ["", ":", "=", ": ", "'", '": "', '\\": \\"', " ", "\n"]
VALUES = ["AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw8", "0123456789abcdef0123456789abcdef", "abc12345", ":pa55@host"]
CASES = [str, str.upper, str.lower, str.title, str.swapcase]
TEXTS = st.builds(
    lambda before, case, name, separator, value, after: before + case(name) + separator + value + after,
    st.text(max_size=3),
    st.sampled_from(CASES),
    st.sampled_from(NAMES),
    st.sampled_from(SEPARATORS),
    st.sampled_from(VALUES),
    st.text(max_size=3),
)


@settings(max_examples=2000)
@given(TEXTS)
def test_the_quick_look_never_skips_text_a_shape_matches(text: str) -> None:
    if re.search("|".join(SECRET_SHAPES), text):
        assert may_hold_a_shape(text)


@given(TEXTS)
def test_masking_is_idempotent(text: str) -> None:
    redactor = Redactor(["AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw8"])
    once = redactor.redact(text)
    assert redactor.redact(once) == once
    assert "AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw8" not in once or MASK in once
