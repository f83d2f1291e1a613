import sys

import pytest
from loguru import logger

from logs import configure_logging, redact, secrets_of
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


def test_no_secret_reaches_a_log_line_or_a_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    token = "123456:AAbbCCddEEffGGhhIIjjKK"
    settings = load_settings(_env_file=None, bot_tokens=f'{{"main": "{token}"}}', log_format="json")
    try:
        configure_logging(settings)
        file_url = f"https://api.telegram.org/file/bot{token}/photos/1.jpg"

        def fetch(url: str) -> None:
            raise RuntimeError(f"could not fetch {url}")

        try:
            fetch(file_url)  # the URL is a variable of the traceback's frames
        except RuntimeError:
            logger.exception("download failed for {}", file_url)
        written = capsys.readouterr().err
    finally:
        logger.remove()
        logger.add(sys.stderr)
    assert "download failed" in written
    assert "AAbbCCddEEffGGhhIIjjKK" not in written
