"""User-given URLs through the HTTP API (SPEC §4.8): a zip_url or audio_url aimed at the server's own
network, however spelled, is answered 422 with one code, before any connection, and costs nothing; so
is a host that trickles, never ends, or redirects forever. A recording fetched later, by the pipeline,
fails the same way for every reason and is refunded."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from sqlalchemy import func, select

from app import App
from generation.store import LedgerEntry
from tests.conftest import AppFactory, closed_port
from tests.constants import API_TOKEN
from tests.e2e.helpers import USER, all_settled, balance_and_ledger_sum, generations_of
from tests.fakes.elevenlabs import FakeElevenLabs
from tests.fakes.file_host import FileHost
from tests.zip_samples import photos_zip

AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
SEED = {"telegram_id": USER, "username": "fox", "is_ru": False, "bot_name": "image_bot"}
BONUS = 300

# How the server's own host can be spelled; the file host listens there.
LOCAL_SPELLINGS = [
    "http://127.0.0.1:{port}/files/photos.zip",
    "http://localhost:{port}/files/photos.zip",
    "http://0.0.0.0:{port}/files/photos.zip",
    "http://2130706433:{port}/files/photos.zip",
    "http://0x7f.1:{port}/files/photos.zip",
    "http://017700000001:{port}/files/photos.zip",
    "http://127.1:{port}/files/photos.zip",
    "http://user:pw@127.0.0.1:{port}/files/photos.zip",
    "http://[::1]:{port}/files/photos.zip",
    "http://[::ffff:127.0.0.1]:{port}/files/photos.zip",
    "http://169.254.169.254/latest/meta-data/",
]


@pytest.fixture
async def files() -> AsyncIterator[FileHost]:
    host = FileHost(trickle_interval=0.05)
    await host.start()
    yield host
    await host.stop()


async def post(app: App, kind: str, body: dict[str, Any]) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"http://127.0.0.1:{app.http_port}/api/generation/{kind}", json=body, headers=AUTH
        ) as answer,
    ):
        return answer.status, await answer.json()


async def ledger_rows(app: App) -> int:
    assert app.services is not None
    async with app.services.db.sessions() as session:
        return int(await session.scalar(select(func.count()).select_from(LedgerEntry)) or 0)


def codes(problems: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(problem["field"], problem["code"]) for problem in problems]


async def test_urls_into_the_servers_own_network_are_refused_alike_and_cost_nothing(
    make_app: AppFactory, files: FileHost, elevenlabs: FakeElevenLabs
) -> None:
    app = await make_app(new_user_bonus=BONUS, fetch_allow_private=False)
    files.put("photos.zip", photos_zip(10))
    for template in LOCAL_SPELLINGS:
        url = template.format(port=files.port)
        status, problems = await post(
            app, "model-training", {**SEED, "zip_url": url, "trigger_word": "tok_me"}
        )
        assert (status, codes(problems)) == (422, [("zip_url", "zip_unreachable")]), url
        status, problems = await post(app, "voice-avatar", {**SEED, "audio_url": url})
        assert (status, codes(problems)) == (422, [("audio_url", "audio_unreachable")]), url
    assert files.accepted == 0
    assert await generations_of(app) == [] and await ledger_rows(app) == 0
    assert elevenlabs.clone_requests == []


async def test_hosts_that_misbehave_are_refused_alike_within_the_deadline(
    make_app: AppFactory, files: FileHost
) -> None:
    app = await make_app(new_user_bonus=BONUS, fetch_timeout=1.0)
    refused = {
        "trickle": (f"{files.base}/trickle", "zip_unreachable"),
        "redirect loop": (f"{files.base}/loop", "zip_unreachable"),
        "404": (f"{files.base}/files/none.zip", "zip_unreachable"),
        "nothing listening": (f"http://127.0.0.1:{closed_port()}/photos.zip", "zip_unreachable"),
        # Over the cap while streaming, from a host that passed the checks: the one finer answer.
        "endless": (f"{files.base}/endless", "zip_too_large"),
    }
    for case, (url, code) in refused.items():
        started = time.monotonic()
        status, problems = await post(
            app, "model-training", {**SEED, "zip_url": url, "trigger_word": "tok_me"}
        )
        assert (status, codes(problems)) == (422, [("zip_url", code)]), case
        assert time.monotonic() - started < 3.0, case
    assert await generations_of(app) == [] and await ledger_rows(app) == 0


async def test_a_recording_the_pipeline_cannot_fetch_fails_with_one_message_and_is_refunded(
    make_app: AppFactory, files: FileHost, elevenlabs: FakeElevenLabs
) -> None:
    app = await make_app(new_user_bonus=BONUS, fetch_timeout=1.0)
    for url in (f"{files.base}/trickle", f"{files.base}/files/none.ogg"):
        status, body = await post(app, "voice-avatar", {**SEED, "audio_url": url})
        assert status == 202, body
    generations = await all_settled(app, 2)
    assert [generation.status for generation in generations] == ["failed", "failed"]
    # Whether the host was slow or answered 404, a client reading the generation learns the same.
    assert {generation.error for generation in generations} == {
        "FetchRefused: the file at the given URL could not be fetched"
    }
    assert await balance_and_ledger_sum(app) == (BONUS, BONUS)
    assert elevenlabs.clone_requests == []
