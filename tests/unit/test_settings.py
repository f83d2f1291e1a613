import pytest

from settings import BotMode, SettingsError, load_settings

GOOD_TOKEN = "123456:AAbbCCddEEffGGhhIIjjKK"


def test_embedded_defaults_need_nothing() -> None:
    settings = load_settings(_env_file=None)
    assert settings.database_url.startswith("sqlite+aiosqlite://")
    assert settings.bot_tokens == {}
    assert settings.bot_mode is BotMode.polling
    assert settings.default_bot_name is None


def test_bot_tokens_parse_from_json_and_keep_order() -> None:
    settings = load_settings(
        _env_file=None, bot_tokens=f'{{"first": "{GOOD_TOKEN}", "second": "{GOOD_TOKEN}"}}'
    )
    assert list(settings.bot_tokens) == ["first", "second"]
    assert settings.default_bot_name == "first"


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"bot_tokens": "{not json"}, "BOT_TOKENS: is not valid JSON"),
        ({"bot_tokens": "[1, 2]"}, "BOT_TOKENS: must be a JSON object"),
        ({"bot_tokens": '{"main": "no-colon-here"}'}, "the token of bot 'main' is not of the shape"),
        ({"bot_tokens": f'{{"bad name!": "{GOOD_TOKEN}"}}'}, "bot name 'bad name!'"),
        ({"bot_mode": "carrier-pigeon"}, "BOT_MODE"),
        ({"admin_ids": "[1, 'x']"}, "ADMIN_IDS"),
        ({"admin_ids": '["a"]'}, "ADMIN_IDS: must be a JSON list of integer"),
        ({"database_url": "mysql://x"}, "DATABASE_URL: must be an async SQLAlchemy URL"),
        ({"redis_url": "http://x"}, "REDIS_URL"),
        ({"http_port": 70000}, "HTTP_PORT"),
        ({"telegram_api_url": "ftp://x"}, "TELEGRAM_API_URL: must be an http"),
        ({"log_format": "xml"}, "LOG_FORMAT"),
    ],
)
def test_each_bad_value_gets_a_clear_message(overrides: dict[str, object], expected: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(_env_file=None, **overrides)
    assert expected in str(caught.value)


def test_a_bad_token_is_never_echoed() -> None:
    secret = "123:short"
    with pytest.raises(SettingsError) as caught:
        load_settings(_env_file=None, bot_tokens=f'{{"main": "{secret}"}}')
    assert secret not in str(caught.value)
    assert "short" not in str(caught.value)


def test_webhook_mode_needs_base_url_and_secret() -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(_env_file=None, bot_mode="webhook", bot_tokens=f'{{"main": "{GOOD_TOKEN}"}}')
    assert "WEBHOOK_BASE_URL" in str(caught.value)


def test_environment_variables_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BOT_TOKENS", f'{{"env_bot": "{GOOD_TOKEN}"}}')
    monkeypatch.setenv("ADMIN_IDS", "[5, 6]")
    monkeypatch.setenv("USE_QUEUE", "false")
    settings = load_settings(_env_file=None)
    assert settings.default_bot_name == "env_bot"
    assert settings.admin_ids == [5, 6]
    assert settings.use_queue is False
