"""A provider's error text is stored with the generation and shown by the HTTP API: a secret it
quotes (a Telegram file URL with a bot token, an API key) is masked there as in the logs.

The app here is started without configure_logging (as `aibot` starts it), so only secrets known by
their shape are masked; tests/unit/test_logs.py shows the settings' own secrets joining them."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from tests.conftest import API_TOKEN, AppFactory
from tests.e2e.helpers import USER, all_settled
from tests.fakes.replicate import FakeReplicate, Outcome

FLUX = "black-forest-labs/flux-schnell"
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
# A token of a bot this process does not run: only its shape gives it away.
UNKNOWN_TOKEN = "6098765432:AAF_unknown-bot-secret-0123456789abcd"


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def test_a_provider_error_quoting_secrets_is_stored_and_shown_masked(
    make_app: AppFactory, http: aiohttp.ClientSession, replicate: FakeReplicate
) -> None:
    app = await make_app()
    base = f"http://127.0.0.1:{app.http_port}"
    quoted = (
        f"could not read https://api.telegram.org/file/bot{UNKNOWN_TOKEN}/photos/1.jpg "
        "(Authorization: Bearer r8_QuotedBack0123456789)"
    )
    replicate.script(FLUX, Outcome(status="failed", error=quoted))
    body = {"telegram_id": USER, "bot_name": "image_bot", "prompt": "a fox"}
    async with http.post(f"{base}/api/generation/text-to-image", json=body, headers=AUTH) as response:
        assert response.status == 202
        generation_id = (await response.json())["id"]
    [generation] = await all_settled(app, 1)
    async with http.get(f"{base}/api/generations/{generation_id}", headers=AUTH) as response:
        shown = await response.json()

    assert shown["status"] == "failed"
    masked = "could not read https://api.telegram.org/file/bot***/photos/1.jpg (Authorization: Bearer ***)"
    assert masked in shown["error"]
    assert shown["error"] == generation.error  # what is stored is what is shown
    assert UNKNOWN_TOKEN.split(":", 1)[1] not in shown["error"] and "r8_Quoted" not in shown["error"]
