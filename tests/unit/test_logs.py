from logs import redact, secrets_of
from settings import load_settings


def test_secrets_are_masked_including_a_bot_tokens_secret_half() -> None:
    settings = load_settings(
        _env_file=None,
        bot_tokens='{"main": "123456:AAbbCCddEEffGGhhIIjjKK"}',
        api_token="api-secret-value",
        replicate_api_token="r8_abcdefgh",
    )
    secrets = secrets_of(settings)
    line = redact(
        "GET https://api.telegram.org/file/bot123456:AAbbCCddEEffGGhhIIjjKK/x and AAbbCCddEEffGGhhIIjjKK "
        "with api-secret-value and r8_abcdefgh",
        secrets,
    )
    assert "AAbbCCddEEffGGhhIIjjKK" not in line
    assert "api-secret-value" not in line
    assert "r8_abcdefgh" not in line
    assert line.count("***") == 4
