"""Logs that follow a generation: in JSON mode, every line written while a generation is handled, on
either plan, carries its id, kind, plan, user and bot: our own lines and the libraries' (the
Replicate SDK's httpx requests, arq's job lines), though no call passes them; and lines of two
generations handled at once each carry their own."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from loguru import logger
from sqlalchemy import select

import logs
from app import App
from generation.store import Generation, Step
from logs import configure_logging
from settings import load_settings
from tests.conftest import API_TOKEN, AppFactory
from tests.e2e.helpers import Chat, all_settled
from tests.fakes.replicate import FakeReplicate, Outcome
from tests.fakes.telegram import FakeTelegram

FLUX = "black-forest-labs/flux-schnell"
CONTEXT = ("generation", "kind", "plan", "user", "bot")
FOX, CAT = 1001, 1002

Lines = list[dict[str, Any]]


class JsonLogs:
    """The process's logging as `aibot` configures it in JSON mode, writing to the captured stderr.
    httpx's request lines, which configure_logging quiets, stand for the libraries' lines."""

    def __init__(self, capfd: pytest.CaptureFixture[str]) -> None:
        self.capfd = capfd

    def start(self, log_level: str = "INFO") -> None:
        # In the test's body: stderr is then the one capfd reads.
        configure_logging(load_settings(_env_file=None, log_format="json", log_level=log_level))
        logging.getLogger("httpx").setLevel(logging.INFO)

    def lines(self) -> Lines:
        """The records written so far, each from a line that is valid JSON."""
        written = self.capfd.readouterr().err
        return [json.loads(line)["record"] for line in written.splitlines() if line.startswith("{")]


@pytest.fixture
def json_logs(monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]) -> Iterator[JsonLogs]:
    """Logging configured by the test is put back after it (stderr, the masking, the loggers)."""
    monkeypatch.setattr(sys, "stderr", sys.stderr)
    monkeypatch.setattr(logs, "_redactor", logs._redactor)
    root_handlers, root_level = logging.root.handlers[:], logging.root.level
    httpx_level = logging.getLogger("httpx").level
    yield JsonLogs(capfd)
    logger.remove()
    logger.add(sys.stderr)
    logging.root.handlers, logging.root.level = root_handlers, root_level
    logging.getLogger("httpx").setLevel(httpx_level)


def context_of(line: dict[str, Any]) -> dict[str, Any]:
    return {key: line["extra"].get(key) for key in CONTEXT}


def expected_context(generation: Generation, user: int) -> dict[str, Any]:
    return {
        "generation": generation.id,
        "kind": "text_to_image",
        "plan": generation.plan,
        "user": user,
        "bot": "image_bot",
    }


async def prediction_of(app: App, generation: Generation) -> str:
    """The Replicate prediction the generation's journal holds: its id is in the SDK's request lines."""
    assert app.services is not None
    async with app.services.db.sessions() as session:
        step = await session.scalar(
            select(Step).where(Step.generation_id == generation.id, Step.name == "prediction:id")
        )
    assert step is not None
    return str(step.result)


@dataclass(frozen=True)
class Handled:
    generation: Generation
    user: int
    prediction: str


def assert_followed(lines: Lines, handled: list[Handled]) -> None:
    """Each generation's lines, ours and httpx's, carry its whole context; a line that names one
    generation carries nothing of the other's."""
    for one in handled:
        expected = expected_context(one.generation, one.user)
        own = [line for line in lines if line["extra"].get("generation") == one.generation.id]
        assert all(context_of(line) == expected for line in own), [context_of(line) for line in own]
        ours = [line for line in own if line["name"] == "generation.execution"]
        # Its start is told by the record's line on Plan B ("recorded; running inline"), its end here.
        assert any(line["message"].startswith("done:") for line in ours)
        requests = [
            line for line in lines if line["name"].startswith("httpx") and one.prediction in line["message"]
        ]
        # The SDK polls the held prediction: several request lines, each in this generation's task.
        assert len(requests) >= 2
        assert all(context_of(line) == expected for line in requests)
    # The record line is written before the generation runs, in the update's (or request's) context.
    recorded = [line for line in lines if line["message"].startswith("recorded")]
    assert sorted(line["extra"]["generation"] for line in recorded) == sorted(
        one.generation.id for one in handled
    )
    assert all(line["extra"]["bot"] == "image_bot" for line in recorded)


async def run_two_at_once(
    app: App, telegram: FakeTelegram, replicate: FakeReplicate, *, cat_through_api: bool = False
) -> list[Handled]:
    """A fox (Telegram) and a cat (Telegram, or the HTTP API), both held at Replicate until both
    are in flight, so their lines interleave."""
    hold = asyncio.Event()
    replicate.script(FLUX, Outcome(hold=hold), Outcome(hold=hold))
    Chat(telegram, user_id=FOX).send("/image a fox")
    if cat_through_api:
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                f"http://127.0.0.1:{app.http_port}/api/generation/text-to-image",
                json={"telegram_id": CAT, "bot_name": "image_bot", "prompt": "a cat"},
                headers={"Authorization": f"Bearer {API_TOKEN}"},
            ) as response,
        ):
            assert response.status == 202
    else:
        Chat(telegram, user_id=CAT).send("/image a cat")
    await replicate.wait_for_create(2)
    await asyncio.sleep(0.1)  # a few polls of each held prediction, interleaved
    hold.set()
    for user in (FOX, CAT):
        await Chat(telegram, user_id=user).reply("Charged 1 ⭐")
    settled = await all_settled(app, 2)
    handled = [
        Handled(generation, generation.request["telegram_id"], await prediction_of(app, generation))
        for generation in settled
    ]
    await app.stop()  # its last lines while stderr is still captured
    return handled


async def test_plan_b_lines_carry_their_own_generation(
    json_logs: JsonLogs, make_app: AppFactory, telegram: FakeTelegram, replicate: FakeReplicate
) -> None:
    json_logs.start()
    app = await make_app()
    handled = await run_two_at_once(app, telegram, replicate)
    assert {one.generation.plan for one in handled} == {"B"}
    assert_followed(json_logs.lines(), handled)


async def test_plan_a_lines_carry_their_own_generation_arqs_included(
    json_logs: JsonLogs,
    make_app: AppFactory,
    telegram: FakeTelegram,
    replicate: FakeReplicate,
    redis_url: str,
) -> None:
    # At DEBUG: arq's lines as a job starts and ends are written at that level only (logs.py).
    json_logs.start(log_level="DEBUG")
    app = await make_app(redis_url=redis_url)
    handled = await run_two_at_once(app, telegram, replicate, cat_through_api=True)
    assert {one.generation.plan for one in handled} == {"A"}
    lines = json_logs.lines()
    assert_followed(lines, handled)
    for one in handled:
        # arq's own lines about the job (started, done) are written around the job, in its task.
        arq_lines = [
            line for line in lines if line["name"] == "arq.worker" and one.generation.id in line["message"]
        ]
        assert len(arq_lines) >= 2
        assert all(context_of(line) == expected_context(one.generation, one.user) for line in arq_lines)


async def test_text_lines_show_the_context_in_a_fixed_order(
    monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    """Whichever field was set first (an update's user and bot come before its generation), text mode
    shows the generation's fields first, in one order, then any other."""
    monkeypatch.setattr(sys, "stderr", sys.stderr)
    monkeypatch.setattr(logs, "_redactor", logs._redactor)
    configure_logging(load_settings(_env_file=None, log_format="text"))
    try:
        with logger.contextualize(user=FOX, bot="image_bot"), logger.contextualize(generation="g1"):
            logger.bind(attempt=2, kind="text_to_image", plan="B").info("running")
            logging.getLogger("aiogram.event").warning("a library's line")
    finally:
        logger.remove()
        logger.add(sys.stderr)
    written = capfd.readouterr().err.splitlines()
    assert written[0].endswith(
        "running [generation=g1 kind=text_to_image plan=B user=1001 bot=image_bot attempt=2]"
    )
    assert written[1].endswith("a library's line [generation=g1 user=1001 bot=image_bot]")
