"""Hostile input to the HTTP API (SPEC §4.6): each answer is a 4xx with reasons, never a 5xx, and a
refused request records nothing, charges nothing and reaches no provider. Each test here is a request
that once answered 500 (or 503: an error of the database taken for an outage)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import asyncpg
import pytest
from yarl import URL

from app import App
from bot.http.web_app import MAX_BODY
from generation.requests import MAX_TELEGRAM_ID
from tests.conftest import API_TOKEN, AppFactory, wait_until
from tests.e2e.helpers import USER, all_settled, balance_and_ledger_sum, generations_of
from tests.e2e.hostile import footprint, raw_exchange, raw_post
from tests.fakes.elevenlabs import FakeElevenLabs
from tests.fakes.replicate import FakeReplicate

AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
SEED: dict[str, Any] = {"telegram_id": USER, "bot_name": "image_bot"}
IMAGE = "/api/generation/text-to-image"


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def base(app: App) -> str:
    return f"http://127.0.0.1:{app.http_port}"


async def post(
    http: aiohttp.ClientSession,
    app: App,
    path: str,
    *,
    body: Any = None,
    data: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    async with http.post(
        base(app) + path, json=body, data=data, headers={**AUTH, **(headers or {})}
    ) as response:
        if response.content_type == "application/json":
            return response.status, await response.json()
        return response.status, await response.text()


async def test_a_non_ascii_bearer_token_is_refused_401(
    make_app: AppFactory, http: aiohttp.ClientSession, replicate: FakeReplicate, elevenlabs: FakeElevenLabs
) -> None:
    app = await make_app()
    before = await footprint(app, replicate, elevenlabs)
    body = {**SEED, "prompt": "a fox"}
    for token in ("Bearer ключ", "Bearer " + API_TOKEN + "é"):
        async with http.post(base(app) + IMAGE, json=body, headers={"Authorization": token}) as response:
            assert response.status == 401
    # Bytes that are not UTF-8 at all reach the handler as surrogates.
    raw = raw_post(IMAGE, b'{"telegram_id": 5, "prompt": "x"}', {"Authorization": b"Bearer \xff\xfe"})
    assert await raw_exchange(app.http_port, raw) == 401
    assert await footprint(app, replicate, elevenlabs) == before


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        (b"[" * 1000 + b"]" * 1000, "nested too deeply"),
        (b'{"telegram_id": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested too deeply"),
        (b'{"telegram_id": 5, "prompt": ' + b'{"a": ' * 1000 + b"1" + b"}" * 1001, "nested too deeply"),
        (b'{"telegram_id": ' + b"9" * 5000 + b', "prompt": "x"}', "digits"),
        (b'{"telegram_id": 5, "prompt": "x", "num_images": -' + b"1" * 4301 + b"}", "digits"),
        (b'{"telegram_id": NaN, "prompt": "x"}', "not valid JSON"),
        (b'{"telegram_id": 5, "prompt": "x", "num_images": 1e999}', "out of range"),
        (b'{"telegram_id": 5, "prompt": "\xff"}', "not UTF-8"),
    ],
)
async def test_a_body_json_cannot_take_is_refused_422(
    make_app: AppFactory,
    http: aiohttp.ClientSession,
    replicate: FakeReplicate,
    elevenlabs: FakeElevenLabs,
    body: bytes,
    detail: str,
) -> None:
    app = await make_app()
    before = await footprint(app, replicate, elevenlabs)
    status, problems = await post(http, app, IMAGE, data=body)
    assert status == 422
    [problem] = problems
    assert problem["field"] == "body" and detail in problem["message"]
    assert await footprint(app, replicate, elevenlabs) == before


async def test_a_body_over_the_limit_answers_413_whether_announced_or_streamed(
    make_app: AppFactory, http: aiohttp.ClientSession, replicate: FakeReplicate, elevenlabs: FakeElevenLabs
) -> None:
    app = await make_app()
    before = await footprint(app, replicate, elevenlabs)
    oversized = b'{"telegram_id": 5, "prompt": "' + b"x" * MAX_BODY + b'"}'
    status, _ = await post(http, app, IMAGE, data=oversized)
    assert status == 413

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the size shows only as it arrives
        for start in range(0, len(oversized), 65536):
            yield oversized[start : start + 65536]

    async with http.post(base(app) + IMAGE, data=chunks(), headers=AUTH) as response:
        assert response.status == 413
    assert await footprint(app, replicate, elevenlabs) == before


@pytest.mark.parametrize(
    "fields",
    [
        {"telegram_id": 2**63},
        {"telegram_id": 2**64 + 1},
        {"telegram_id": MAX_TELEGRAM_ID + 1},
        {"chat_id": 2**63},
        {"chat_id": -(2**63) - 1},
        {"chat_id": -(MAX_TELEGRAM_ID + 1)},
        {"num_images": 2**63},
        {"telegram_id": True},  # would be user 1
        {"telegram_id": "1001"},
        {"is_ru": "yes"},
        {"username": "fox\x00"},
        {"prompt": "a \x00 fox"},
        {"model": "flux\x00"},
        {"bot_name": "image_bot\x00"},
    ],
)
async def test_a_value_the_database_cannot_hold_is_refused_422(
    make_app: AppFactory,
    http: aiohttp.ClientSession,
    replicate: FakeReplicate,
    elevenlabs: FakeElevenLabs,
    database_url: str,
    fields: dict[str, Any],
) -> None:
    app = await make_app(database_url=database_url)
    before = await footprint(app, replicate, elevenlabs)
    status, problems = await post(http, app, IMAGE, body={**SEED, "prompt": "a fox", **fields})
    assert status == 422
    assert [problem["field"] for problem in problems] == list(fields)
    assert await footprint(app, replicate, elevenlabs) == before


async def test_the_largest_telegram_ids_are_taken_on_both_databases(
    make_app: AppFactory, http: aiohttp.ClientSession, replicate: FakeReplicate, database_url: str
) -> None:
    app = await make_app(database_url=database_url)
    body = {
        "telegram_id": MAX_TELEGRAM_ID,
        "chat_id": -MAX_TELEGRAM_ID,
        "prompt": "edge",
        "bot_name": "image_bot",
    }
    status, answer = await post(http, app, IMAGE, body=body)
    assert status == 202
    [generation] = await all_settled(app, 1)
    assert generation.id == answer["id"] and generation.chat_id == -MAX_TELEGRAM_ID
    assert await balance_and_ledger_sum(app, telegram_id=MAX_TELEGRAM_ID) == (9, 9)


@pytest.mark.parametrize(
    "path",
    [
        "/api/generations/%00",
        "/api/generations/" + "a" * 33,
        "/api/generations/%F0%9F%A6%8A",
        "/api/users/image%00bot/1001",
        "/api/users/" + "b" * 65 + "/1001",
        "/api/users/%ED%A0%80/1001",
    ],
)
async def test_a_path_value_the_database_cannot_hold_names_nothing_404(
    make_app: AppFactory, http: aiohttp.ClientSession, database_url: str, path: str
) -> None:
    app = await make_app(database_url=database_url)
    async with http.get(URL(base(app) + path, encoded=True), headers=AUTH) as response:
        assert response.status == 404


@pytest.mark.parametrize("telegram_id", [str(MAX_TELEGRAM_ID + 1), str(2**63), "0", "-5", "1e3", "٣"])
async def test_a_user_path_with_no_telegram_id_is_refused_422(
    make_app: AppFactory, http: aiohttp.ClientSession, database_url: str, telegram_id: str
) -> None:
    app = await make_app(database_url=database_url)
    async with http.get(f"{base(app)}/api/users/image_bot/{telegram_id}", headers=AUTH) as response:
        assert response.status == 422
        [problem] = await response.json()
        assert problem["field"] == "telegram_id"


@pytest.mark.parametrize("key", ["k" * 121, "ключ", "tab\there"])
async def test_an_idempotency_key_that_cannot_be_kept_is_refused_422(
    make_app: AppFactory,
    http: aiohttp.ClientSession,
    replicate: FakeReplicate,
    elevenlabs: FakeElevenLabs,
    database_url: str,
    key: str,
) -> None:
    app = await make_app(database_url=database_url)
    before = await footprint(app, replicate, elevenlabs)
    status, problems = await post(
        http, app, IMAGE, body={**SEED, "prompt": "a fox"}, headers={"Idempotency-Key": key}
    )
    assert status == 422
    assert [(problem["field"], problem["code"]) for problem in problems] == [("Idempotency-Key", "invalid")]
    # Bytes that are not UTF-8, sent as they are: they arrive as surrogates no column can hold.
    raw = raw_post(
        IMAGE, b'{"telegram_id": 5, "prompt": "x"}', {**_raw_auth(), "Idempotency-Key": b"\xff\xfek"}
    )
    assert await raw_exchange(app.http_port, raw) == 422
    assert await footprint(app, replicate, elevenlabs) == before


def _raw_auth() -> dict[str, bytes]:
    return {"Authorization": f"Bearer {API_TOKEN}".encode()}


# --- finding 6: an Idempotency-Key reused with another request -----------------------------------


async def test_a_key_reused_with_another_request_is_refused_and_a_true_repeat_answered(
    make_app: AppFactory, http: aiohttp.ClientSession, replicate: FakeReplicate, elevenlabs: FakeElevenLabs
) -> None:
    app = await make_app()
    key = {"Idempotency-Key": "order-7"}
    body = {**SEED, "prompt": "a fox", "num_images": 2}
    status, first = await post(http, app, IMAGE, body=body, headers=key)
    assert status == 202
    await all_settled(app, 1)
    before = await footprint(app, replicate, elevenlabs)

    status, again = await post(http, app, IMAGE, body=dict(reversed(body.items())), headers=key)
    assert (status, again["id"]) == (202, first["id"])  # the same request, its fields in another order
    status, again = await post(http, app, IMAGE, body={**body, "prompt": "  a fox "}, headers=key)
    assert (status, again["id"]) == (202, first["id"])  # the same once validated (whitespace stripped)

    others = [
        (IMAGE, {**body, "prompt": "a wolf"}),
        (IMAGE, {**body, "num_images": 1}),
        (IMAGE, {**body, "model": "flux-1-1-pro", "num_images": 1}),
        (IMAGE, {**body, "is_ru": True}),
        ("/api/generation/neuro-photo", body),
        ("/api/generation/text-to-video", {**SEED, "prompt": "a fox"}),
    ]
    for path, other in others:
        status, problems = await post(http, app, path, body=other, headers=key)
        assert status == 422, (path, other)
        assert [(p["field"], p["code"]) for p in problems] == [("Idempotency-Key", "idempotency_key_reused")]
        assert "another request" in problems[0]["message"]
    assert await footprint(app, replicate, elevenlabs) == before
    # The key is the user's: another user may use the same one for their own request.
    status, theirs = await post(http, app, IMAGE, body={**body, "telegram_id": USER + 1}, headers=key)
    assert status == 202 and theirs["id"] != first["id"]


async def test_racing_requests_under_one_key_make_one_generation_and_refuse_the_other_request(
    make_app: AppFactory,
    http: aiohttp.ClientSession,
    replicate: FakeReplicate,
    database_url: str,
    redis_url: str,
) -> None:
    """Two bodies race under each key, three copies of each: whichever is recorded first wins, its
    copies get that one generation, the other body's copies get 422. One charge per key."""
    app = await make_app(database_url=database_url, redis_url=redis_url, new_user_bonus=20)
    keys = [f"race-{n}" for n in range(4)]
    sent = [(key, prompt) for key in keys for prompt in ("a fox", "a wolf") * 3]
    answers = await asyncio.gather(
        *(
            post(http, app, IMAGE, body={**SEED, "prompt": prompt}, headers={"Idempotency-Key": key})
            for key, prompt in sent
        )
    )
    generations = {generation.id: generation for generation in await all_settled(app, len(keys))}
    assert len(generations) == len(keys)
    for key in keys:
        mine = [
            (prompt, answer)
            for (sent_key, prompt), answer in zip(sent, answers, strict=True)
            if sent_key == key
        ]
        accepted = {answer[1]["id"] for _, answer in mine if answer[0] == 202}
        assert len(accepted) == 1, mine
        [generation_id] = accepted
        winner = generations[generation_id].request["prompt"]
        for prompt, (status, answer) in mine:
            if prompt == winner:
                assert (status, answer["id"]) == (202, generation_id)
            else:
                assert status == 422 and answer[0]["code"] == "idempotency_key_reused"
    assert replicate.create_count() == len(keys)
    assert await balance_and_ledger_sum(app) == (20 - len(keys), 20 - len(keys))
    assert len(await generations_of(app)) == len(keys)


async def test_a_record_in_a_transaction_locks_the_user_before_it_takes_the_request_key(
    make_app: AppFactory,
    http: aiohttp.ClientSession,
    replicate: FakeReplicate,
    elevenlabs: FakeElevenLabs,
    postgres_url: str,
    redis_url: str,
) -> None:
    """The lock order that keeps two records under one key from deadlocking on PostgreSQL. An image
    request is recorded in one statement, which locks the user's row, then takes the request key; a
    speech request (a kind with a preparer) in a transaction, which must take them in the same order.
    Held up on the user's row, it has not taken the key yet: a row under that key goes in without
    waiting. (In the other order the two deadlocked, and one of them was answered 503.)"""
    app = await make_app(database_url=postgres_url, redis_url=redis_url, new_user_bonus=50)
    status, _ = await post(http, app, IMAGE, body={**SEED, "prompt": "a first one"})
    assert status == 202
    await all_settled(app, 1)
    dsn = postgres_url.replace("+asyncpg", "")
    holder, probe = await asyncpg.connect(dsn), await asyncpg.connect(dsn)
    try:
        holding = holder.transaction()
        await holding.start()
        await holder.execute("SELECT 1 FROM users WHERE telegram_id = $1 FOR NO KEY UPDATE", USER)
        speech = asyncio.create_task(
            post(
                http,
                app,
                "/api/generation/text-to-speech",
                body={**SEED, "text": "hello"},
                headers={"Idempotency-Key": "raced"},
            )
        )

        async def held_up() -> bool:
            return bool(
                await probe.fetchval(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND wait_event_type = 'Lock'"
                )
            )

        await wait_until(held_up)
        # A copy of the first generation under the speech request's key: it would wait for the
        # held-up transaction (and time out) only if that had inserted its generation already.
        await probe.execute("SET lock_timeout = '2s'")
        names = [
            str(row["column_name"])
            for row in await probe.fetch(
                "SELECT column_name FROM information_schema.columns WHERE table_name = 'generations'"
            )
        ]
        values = ", ".join({"id": "$1", "request_key": "$2"}.get(name, name) for name in names)
        copy = probe.transaction()
        await copy.start()
        await probe.execute(
            # Column names from the database's own catalogue; the values are bound.
            f"INSERT INTO generations ({', '.join(names)}) SELECT {values} FROM generations LIMIT 1",  # noqa: S608
            "f" * 32,
            f"http:image_bot:{USER}:raced",
        )
        await copy.rollback()
        await holding.rollback()
        status, answer = await speech
        assert status == 202, answer
    finally:
        await holder.close()
        await probe.close()
