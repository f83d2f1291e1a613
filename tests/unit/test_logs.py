"""What the process writes to stderr carries no secret: lines, tracebacks (chained causes too), the
stdlib loggers' records and JSON lines, whatever exception was logged; and logging goes on after."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiogram import Bot
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiohttp import ClientResponseError, web
from aiohttp.test_utils import TestServer
from loguru import logger

import logs
from logs import configure_logging
from settings import load_settings

# A real token's shape: "<bot id>:<35 characters>".
TOKEN = "7012345678:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw8"
SECRET_HALF = TOKEN.split(":", 1)[1]
FILE_URL_PATH = f"/file/bot{TOKEN}/photos/file_1.jpg"
# A token of a bot this process does not run: only its shape gives it away.
UNKNOWN_TOKEN = "6098765432:AAF_unknown-bot-secret-0123456789abcd"

Configure = Callable[..., None]


@pytest.fixture
def configure(monkeypatch: pytest.MonkeyPatch) -> Iterator[Configure]:
    """configure_logging as the process does it; stderr, the masking and the loggers are put back."""
    monkeypatch.setattr(sys, "stderr", sys.stderr)
    monkeypatch.setattr(logs, "_redactor", logs._redactor)
    root_handlers, root_level = logging.root.handlers[:], logging.root.level

    def configure_with(**overrides: Any) -> None:
        configure_logging(load_settings(_env_file=None, bot_tokens=f'{{"main": "{TOKEN}"}}', **overrides))

    yield configure_with
    logger.remove()
    logger.add(sys.stderr)
    logging.root.handlers, logging.root.level = root_handlers, root_level


@asynccontextmanager
async def telegram_without_files() -> AsyncIterator[str]:
    """A Bot API server that answers 404 to every file: aiogram's download raises aiohttp's
    ClientResponseError, whose text is the file URL with the bot's token in it."""
    async with TestServer(web.Application()) as server:
        yield str(server.make_url("")).rstrip("/")


async def failed_download(base_url: str) -> ClientResponseError:
    bot = Bot(TOKEN, session=AiohttpSession(api=TelegramAPIServer.from_base(base_url)))
    try:
        await bot.download_file("photos/file_1.jpg")
    except ClientResponseError as error:
        return error
    finally:
        await bot.session.close()
    raise AssertionError("the download did not fail")


class NeedsTwoArguments(Exception):
    """Like aiohttp's errors: it cannot be built again from one message."""

    def __init__(self, url: str, status: int) -> None:
        super().__init__(url, status)
        self.url, self.status = url, status

    def __str__(self) -> str:
        return f"{self.status} from {self.url}"


def assert_no_secret(written: str) -> None:
    assert TOKEN not in written and SECRET_HALF not in written
    assert UNKNOWN_TOKEN.split(":", 1)[1] not in written


def json_lines(written: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in written.splitlines()]  # each line is valid JSON


@pytest.mark.parametrize("log_format", ["text", "json"])
async def test_a_failed_telegram_download_is_logged_without_the_token(
    configure: Configure, capfd: pytest.CaptureFixture[str], log_format: str
) -> None:
    configure(log_format=log_format)
    async with telegram_without_files() as base_url:
        error = await failed_download(base_url)
    assert TOKEN in str(error)  # the URL aiohttp puts in its message holds the token
    try:
        raise error
    except ClientResponseError:
        logger.exception("the user's photo could not be downloaded")
    logger.info("the next line")
    written = capfd.readouterr().err

    assert_no_secret(written)
    assert "/file/bot***/photos/file_1.jpg" in written  # masked in place, the rest kept
    assert "ClientResponseError" in written and "404" in written
    if log_format == "json":
        # The test server's access log line (aiohttp, through stdlib logging) comes first.
        *_, failed, last = json_lines(written)
        assert "/file/bot***/photos" in failed["record"]["exception"]["value"]
        assert "Traceback" in failed["text"] and last["record"]["message"] == "the next line"
    else:
        assert written.rstrip().endswith("the next line")


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_a_cause_that_holds_the_secret_is_masked_in_the_chained_traceback(
    configure: Configure, capfd: pytest.CaptureFixture[str], log_format: str
) -> None:
    configure(log_format=log_format)
    try:
        try:
            raise NeedsTwoArguments(f"https://api.telegram.org{FILE_URL_PATH}", 404)
        except NeedsTwoArguments as error:
            raise RuntimeError("wrapped") from error
    except RuntimeError:
        logger.exception("download failed")
    logger.info("the next line")
    written = capfd.readouterr().err

    assert_no_secret(written)
    assert "direct cause" in written and "404 from https://api.telegram.org/file/bot***/photos" in written
    assert "the next line" in written


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_an_exception_that_cannot_be_built_from_one_string_is_logged_masked(
    configure: Configure, capfd: pytest.CaptureFixture[str], log_format: str
) -> None:
    configure(log_format=log_format)
    try:
        raise NeedsTwoArguments(f"https://api.telegram.org{FILE_URL_PATH} and {SECRET_HALF}", 502)
    except NeedsTwoArguments:
        logger.exception("fetch failed")
    logger.info("the next line")
    written = capfd.readouterr().err

    assert_no_secret(written)
    assert "NeedsTwoArguments: 502 from" in written or '"type": "NeedsTwoArguments"' in written
    assert "Logging error" not in written and "the next line" in written


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_secrets_the_process_does_not_know_are_masked_by_their_shape(
    configure: Configure, capfd: pytest.CaptureFixture[str], log_format: str
) -> None:
    configure(log_format=log_format)  # none of these is in the settings
    logger.info(
        "GET https://api.telegram.org/bot{}/getMe with Authorization: Bearer r8_Unknown0123456789 "
        "and xi-api-key: sk_0123456789abcdef0123456789abcdef0123 signed whsec_c2VjcmV0c2VjcmV0 "
        "at https://cdn.example/a.png?token=tok3n-value&size=2",
        UNKNOWN_TOKEN,
    )
    written = capfd.readouterr().err

    assert_no_secret(written)
    for secret in ("r8_Unknown0123456789", "sk_0123456789abcdef", "whsec_c2Vj", "tok3n-value"):
        assert secret not in written
    assert "/bot***/getMe" in written and "size=2" in written
    if log_format == "json":
        [line] = json_lines(written)
        assert "Authorization: Bearer ***" in line["record"]["message"]


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_stdlib_records_from_libraries_are_masked_too(
    configure: Configure, capfd: pytest.CaptureFixture[str], log_format: str
) -> None:
    configure(log_format=log_format)
    logging.getLogger("aiohttp.client").warning(
        "GET %s answered 404", f"https://api.telegram.org{FILE_URL_PATH}"
    )
    try:
        raise NeedsTwoArguments(f"https://api.telegram.org/bot{TOKEN}/getUpdates", 502)
    except NeedsTwoArguments:
        logging.getLogger("aiogram.dispatcher").exception("Failed to fetch updates")
    logging.getLogger("arq.worker").info("the next line")
    written = capfd.readouterr().err

    assert_no_secret(written)
    assert "GET https://api.telegram.org/file/bot***/photos/file_1.jpg answered 404" in written
    assert "Failed to fetch updates" in written and "/bot***/getUpdates" in written
    assert "the next line" in written


def test_aiogram_s_line_for_every_update_is_written_at_debug_only(
    configure: Configure, capfd: pytest.CaptureFixture[str]
) -> None:
    events = logging.getLogger("aiogram.event")
    configure()
    events.info("Update id=%s is %s. Duration %d ms by bot id=%d", 1, "handled", 4, 42)
    events.warning("a warning of aiogram's")
    written = capfd.readouterr().err
    assert "Update id=1" not in written and "a warning of aiogram's" in written

    configure(log_level="DEBUG")
    events.info("Update id=%s is %s. Duration %d ms by bot id=%d", 2, "handled", 4, 42)
    assert "Update id=2 is handled" in capfd.readouterr().err


def test_arq_s_lines_as_a_job_starts_and_ends_are_written_at_debug_only(
    configure: Configure, capfd: pytest.CaptureFixture[str]
) -> None:
    worker = logging.getLogger("arq.worker")

    def job_lines(job: str) -> None:
        # arq's own calls, as arq.worker makes them for a job that starts, is retried, and ends.
        worker.info("%6.2fs → %s(%s)%s", 0.98, f"{job}:run_generation", f"'{job}'", "")
        worker.info("%6.2fs ↻ %s retrying job in %0.2fs", 0.5, f"{job}:run_generation", 2.0)
        worker.info("%6.2fs ← %s ● %s", 0.08, f"{job}:run_generation", "'done'")

    configure()
    job_lines("job1")
    written = capfd.readouterr().err
    assert "job1:run_generation retrying job in 2.00s" in written  # a retry is still told
    assert "→ job1" not in written and "← job1" not in written

    configure(log_level="DEBUG")
    job_lines("job2")
    written = capfd.readouterr().err
    assert (
        "0.98s → job2:run_generation('job2')" in written and "0.08s ← job2:run_generation ● 'done'" in written
    )

    configure()  # configured again: quiet again
    job_lines("job3")
    assert "→ job3" not in capfd.readouterr().err


def test_texts_stored_or_shown_are_masked_with_the_settings_secrets_too(configure: Configure) -> None:
    assert logs.redact(f"key {SECRET_HALF}") == f"key {SECRET_HALF}"  # not a shape: only known from settings
    configure()
    assert logs.redact(f"key {SECRET_HALF}") == "key ***"


def test_a_json_line_is_the_one_loguru_would_write_when_nothing_is_masked(
    configure: Configure, capfd: pytest.CaptureFixture[str]
) -> None:
    configure(log_format="json")
    loguru_own = io.StringIO()
    logger.add(loguru_own, serialize=True, diagnose=False)
    try:
        raise NeedsTwoArguments("https://example.com/a.png", 404)
    except NeedsTwoArguments:
        logger.bind(generation="abc", user=42, extras=[1, "two"], quote='say "hi"\n').exception("failed")
    [ours] = json_lines(capfd.readouterr().err)
    assert ours == json.loads(loguru_own.getvalue())


def test_a_secret_in_a_json_line_is_masked_and_the_line_stays_valid_json(
    configure: Configure, capfd: pytest.CaptureFixture[str]
) -> None:
    configure(log_format="json", api_token='api"token\\with\nescapes')
    logger.bind(token_in_extra=f"bot{TOKEN}").info(
        'sent "{}" and {}', 'api"token\\with\nescapes', SECRET_HALF
    )
    [line] = json_lines(capfd.readouterr().err)
    assert line["record"]["message"] == 'sent "***" and ***'
    assert line["record"]["extra"] == {"token_in_extra": "bot***"}
    assert "escapes" not in line["text"] and SECRET_HALF not in line["text"]


def test_braces_and_tags_in_a_bound_value_do_not_break_a_text_line(
    configure: Configure, capfd: pytest.CaptureFixture[str]
) -> None:
    configure()
    logger.bind(prompt="a {cat} in <red> boots").info("prompt taken")
    logger.info("the next line")
    written = capfd.readouterr().err
    assert "prompt taken [prompt=a {cat} in <red> boots]" in written
    assert "Logging error" not in written and "the next line" in written


def test_every_text_line_has_the_same_template_whatever_its_context(
    configure: Configure, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """loguru parses a template it has not seen for its colours (it remembers 64): one per line's
    context would be parsed for every generation."""
    templates: list[str] = []
    format_line = logs._text_format

    def remembered(record: Any) -> str:
        templates.append(format_line(record))
        return templates[-1]

    monkeypatch.setattr(logs, "_text_format", remembered)
    configure()
    for generation in ("g-1", "g-2"):
        logger.bind(generation=generation, user=7).info("running")
    logger.info("no context")
    written = capfd.readouterr().err
    assert "running [generation=g-1 user=7]" in written and "running [generation=g-2 user=7]" in written
    assert "no context\n" in written
    assert len(templates) == 3 and len(set(templates)) == 1


def test_what_bypasses_the_logger_on_stderr_is_masked_even_split_over_writes(
    configure: Configure, capfd: pytest.CaptureFixture[str]
) -> None:
    configure()
    sys.stderr.write(f"GET https://api.telegram.org/bot{TOKEN[:20]}")  # as a traceback may be written
    sys.stderr.write(f"{TOKEN[20:]}/getMe failed\n")
    sys.stderr.write(f"{SECRET_HALF} without a newline")
    sys.stderr.flush()
    written = capfd.readouterr().err
    assert_no_secret(written)
    assert "GET https://api.telegram.org/bot***/getMe failed\n*** without a newline" in written


UNCAUGHT = f"""
import logs, settings
logs.configure_logging(settings.load_settings(_env_file=None, bot_tokens='{{"main": "{TOKEN}"}}'))
try:
    raise OSError("while fetching https://api.telegram.org{FILE_URL_PATH}")
except OSError as error:
    raise RuntimeError("the bot stopped") from error
"""


def test_an_uncaught_exception_is_printed_masked() -> None:
    result = subprocess.run(  # noqa: S603 - this interpreter, a fixed script
        [sys.executable, "-c", UNCAUGHT],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "RuntimeError: the bot stopped" in result.stderr
    assert "OSError: while fetching https://api.telegram.org/file/bot***/photos/file_1.jpg" in result.stderr
    assert_no_secret(result.stderr)


def test_a_request_aiohttp_cannot_parse_is_one_line_without_a_traceback(
    configure: Configure, capfd: pytest.CaptureFixture[str]
) -> None:
    """Anyone can send bytes that are no HTTP request; each would otherwise be an ERROR with aiohttp's
    parser traceback. A handler's own error keeps its traceback."""
    from aiohttp.http_exceptions import BadHttpMessage

    configure()
    server_log = logging.getLogger("aiohttp.server")
    try:
        raise BadHttpMessage("Invalid method encountered")
    except BadHttpMessage:
        server_log.exception("Error handling request from %s", "127.0.0.1")
    try:
        raise RuntimeError("a handler's bug")
    except RuntimeError:
        server_log.exception("Error handling request from %s", "127.0.0.1")
    written = capfd.readouterr().err

    assert "malformed HTTP request refused: BadHttpMessage" in written
    assert written.count("Traceback") == 1 and "RuntimeError: a handler's bug" in written
    assert "Invalid method encountered" not in written
