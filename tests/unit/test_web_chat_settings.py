"""WEB_CHAT: on by default only without bot tokens on a loopback-bound server; explicit wins."""

from __future__ import annotations

import pytest

from settings import WEB_CHAT_BOT_NAME, load_settings


@pytest.mark.parametrize(
    ("values", "enabled"),
    [
        ({}, True),
        ({"http_host": "localhost"}, True),
        ({"http_host": "192.0.2.10"}, False),  # beyond loopback: only when asked for
        ({"http_host": "192.0.2.10", "web_chat": True}, True),
        ({"bot_tokens": {"shop": "100001:AAbbCCddEEffGGhhIIjjKKllMMnnOOppQQr"}}, False),
        ({"bot_tokens": {"shop": "100001:AAbbCCddEEffGGhhIIjjKKllMMnnOOppQQr"}, "web_chat": True}, True),
        ({"web_chat": False}, False),
    ],
)
def test_when_the_web_chat_is_served(values: dict[str, object], enabled: bool) -> None:
    settings = load_settings(_env_file=None, **values)
    assert settings.web_chat_enabled is enabled
    assert (WEB_CHAT_BOT_NAME in settings.bot_names) is enabled
