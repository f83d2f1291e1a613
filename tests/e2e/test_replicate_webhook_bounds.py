"""Replicate's callbacks, signed with the right secret but with content no real callback has: each is
refused with 400 before the database is asked (a 500 here would make Replicate retry it for hours)."""

from __future__ import annotations

import time

import aiohttp
import pytest

from tests.conftest import AppFactory
from tests.fakes.replicate import FakeReplicate

DEEP = "[" * 100_000 + "]" * 100_000
HUGE_NUMBER = '{"id": "x", "status": "succeeded", "n": ' + "1" * 5000 + "}"
FINE = '{"id": "x", "status": "succeeded", "output": ["https://example.invalid/a.png"]}'


@pytest.mark.parametrize(
    ("query", "body"),
    [
        ("generation=%00&step=prediction", FINE),
        ("generation=abc&step=%00", FINE),
        ("generation=abc&step=other", FINE),
        ("generation=" + "a" * 500 + "&step=prediction", FINE),
        ("generation=abc&step=prediction", DEEP),
        ("generation=abc&step=prediction", HUGE_NUMBER),
        ("generation=abc&step=prediction", '{"status": NaN}'),
        ("generation=abc&step=prediction", "[1, 2]"),
    ],
)
async def test_a_signed_callback_that_no_real_one_looks_like_is_refused(
    make_app: AppFactory, replicate: FakeReplicate, database_url: str, query: str, body: str
) -> None:
    app = await make_app(database_url=database_url)
    now = int(time.time())
    headers = {
        "webhook-id": "msg_odd",
        "webhook-timestamp": str(now),
        "webhook-signature": replicate.sign_webhook("msg_odd", now, body),
        "Content-Type": "application/json",
    }
    url = f"http://127.0.0.1:{app.http_port}/webhooks/replicate?{query}"
    async with aiohttp.ClientSession() as http, http.post(url, data=body, headers=headers) as response:
        assert response.status == 400, await response.text()
