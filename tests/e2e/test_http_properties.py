"""Property-based tests of the HTTP API, driven by its own OpenAPI document (SPEC §4.6): whatever the
body, headers or path, the app never answers 5xx, answers only what the document lists, and a request
the document refuses is refused, records nothing, charges nothing and reaches no provider. Besides the
random ones, one test sends every field of every kind at every edge value of its types (numbers past
64 bits, NUL, the longest strings): the values a schema that says too little lets through.

Hypothesis runs in a worker thread (its tests are synchronous); each example's requests run on the
test's event loop, where the in-process app serves them against the real databases.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import quote

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, TypeAdapter
from sqlalchemy import func, select
from yarl import URL

from app import App
from bot.http import openapi
from generation.catalog import load_catalog
from generation.store import LedgerEntry, User
from tests.conftest import API_TOKEN, AppFactory, closed_port
from tests.e2e.helpers import USER, all_settled, generations_of
from tests.e2e.hostile import footprint, provider_requests
from tests.e2e.openapi_strategies import Override, SchemaStrategies, any_json, weighted
from tests.fakes.elevenlabs import RACHEL_VOICE_ID, FakeElevenLabs
from tests.fakes.replicate import FakeReplicate

AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
T = TypeVar("T")
# Modest runs: each example is a real request (or a few) against a real database; the suite keeps
# under its 10 minutes, and the deterministic edge-value sweep covers every field on every run.
FUZZ = settings(
    max_examples=40,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
)
ANSWER_MODELS: dict[str, type[BaseModel]] = {model.__name__: model for model in openapi.ANSWERS}


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


class Driver:
    """The app as the hypothesis thread sees it: each call runs on the test's loop and waits for it."""

    def __init__(self, app: App, http: aiohttp.ClientSession, loop: asyncio.AbstractEventLoop) -> None:
        self.app = app
        self.http = http
        self.loop = loop
        self.base = f"http://127.0.0.1:{app.http_port}"

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=60)

    def send(self, method: str, path: str, *, data: bytes | None = None, headers: dict[str, str]) -> Answer:
        return self.run(self.request(method, path, data, headers))

    async def request(self, method: str, path: str, data: bytes | None, headers: dict[str, str]) -> Answer:
        url = URL(self.base + path, encoded=True)
        async with self.http.request(method, url, data=data, headers=headers) as response:
            text = await response.text()
            return Answer(response.status, response.content_type, text)


@dataclass(frozen=True, repr=False)
class Answer:
    status: int
    content_type: str
    text: str

    def json(self) -> Any:
        assert self.content_type == "application/json", self
        return json.loads(self.text)

    def __repr__(self) -> str:
        return f"{self.status} {self.text[:300]}"


async def started(
    make_app: AppFactory, http: aiohttp.ClientSession, **settings: Any
) -> tuple[Driver, dict[str, Any]]:
    """The app (fetching no user URL: they all lead to a closed loopback port) and its document."""
    app = await make_app(fetch_allow_private=False, **settings)
    async with http.get(f"http://127.0.0.1:{app.http_port}/openapi.json") as response:
        assert response.status == 200
        document: dict[str, Any] = await response.json()
    return Driver(app, http, asyncio.get_running_loop()), document


def check_documented(document: dict[str, Any], path: str, method: str, answer: Answer) -> None:
    """The answer is one the document lists for the operation, shaped as it says."""
    assert answer.status < 500, answer
    responses = document["paths"][path][method]["responses"]
    listed = responses.get(str(answer.status)) or responses.get(f"{str(answer.status)[0]}XX")
    assert listed is not None, f"{method.upper()} {path} answered {answer}, which its document does not list"
    schema = listed.get("content", {}).get("application/json", {}).get("schema")
    if schema is None:
        return
    if schema.get("type") == "array":
        model = ANSWER_MODELS[schema["items"]["$ref"].rsplit("/", 1)[1]]
        problems = TypeAdapter(list[model]).validate_python(answer.json())  # type: ignore[valid-type]
        assert problems, "a 422 names at least one problem"
    elif "$ref" in schema:
        ANSWER_MODELS[schema["$ref"].rsplit("/", 1)[1]].model_validate(answer.json())


def creation_operations(document: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [
        (path, item["post"]["requestBody"]["content"]["application/json"]["schema"])
        for path, item in document["paths"].items()
        if path.startswith("/api/generation/")
    ]


def idempotency_keys() -> st.SearchStrategy[dict[str, str]]:
    """No key, one of a few (so that keys are reused, with the same body or another), or any text."""
    header_text = st.text(st.characters(blacklist_categories=("Cc", "Cs")), max_size=130)
    key = st.sampled_from(["k1", "k2", "k3"]) | header_text
    return st.fixed_dictionaries({}, optional={"Idempotency-Key": key})


def lifelike_overrides() -> dict[str, Override]:
    """Besides the schema's own values, mostly values that pass the app's checks beyond the schema too
    (known users, bots, models and voices), so that fitting bodies are accepted often enough to be
    charged and run. User URLs only lead to a closed port on loopback: never anywhere else."""
    nowhere = f"http://127.0.0.1:{closed_port()}"
    url = st.builds(lambda n: f"{nowhere}/file-{n}", st.integers(0, 9)) | st.none()
    models = st.sampled_from(sorted(load_catalog().models))
    known_voices = st.sampled_from([None, RACHEL_VOICE_ID])
    plain_text = st.text(min_size=1, max_size=60)
    return {
        "telegram_id": lambda own: mostly(st.sampled_from([USER, USER + 1, USER + 2]), own),
        "bot_name": lambda own: mostly(st.sampled_from([None, "image_bot", "other_bot"]), own),
        "model": lambda own: mostly(st.none(), models | own),
        "chat_id": lambda own: mostly(st.sampled_from([None, USER]), own),
        "image_url": lambda own: url,
        "audio_url": lambda own: url,
        "zip_url": lambda own: url,
        "voice_id": lambda own: mostly(known_voices, own),
        "prompt": lambda own: mostly(plain_text, own),
        "text": lambda own: mostly(plain_text, own),
    }


def mostly(usual: st.SearchStrategy[Any], rare: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return weighted((3, usual), (1, rare))


async def charges_and_grants(app: App) -> int:
    """Ledger lines other than refunds: a running generation may refund meanwhile, nothing else moves."""
    assert app.services is not None
    async with app.services.db.sessions() as session:
        count = await session.scalar(
            select(func.count())
            .select_from(LedgerEntry)
            .where(LedgerEntry.operation_key.not_like("refund:%"))
        )
    return int(count or 0)


# --- the properties ----------------------------------------------------------------------------------


async def test_a_body_the_document_refuses_is_refused_422_and_costs_nothing(
    make_app: AppFactory,
    http: aiohttp.ClientSession,
    replicate: FakeReplicate,
    elevenlabs: FakeElevenLabs,
    database_url: str,
) -> None:
    driver, document = await started(make_app, http, database_url=database_url)
    schemas = SchemaStrategies(document["components"]["schemas"], lifelike_overrides())

    def refused_bodies(schema: dict[str, Any]) -> st.SearchStrategy[bytes]:
        breaking = schemas.breaking(schema).map(lambda body: json.dumps(body).encode())
        return weighted((3, breaking), (1, schemas.unparsable(schema)), (1, st.binary(max_size=200)))

    refused_requests = st.sampled_from(creation_operations(document)).flatmap(
        lambda operation: st.tuples(st.just(operation[0]), refused_bodies(operation[1]))
    )
    before = await footprint(driver.app, replicate, elevenlabs)

    @FUZZ
    @given(request=refused_requests, headers=idempotency_keys())
    def refused(request: tuple[str, bytes], headers: dict[str, str]) -> None:
        path, body = request
        answer = driver.send("POST", path, data=body, headers={**AUTH, **headers})
        assert answer.status == 422, (body[:300], answer)
        check_documented(document, path, "post", answer)
        assert driver.run(footprint(driver.app, replicate, elevenlabs)) == before

    await asyncio.to_thread(refused)


@pytest.mark.slow
async def test_any_request_is_answered_as_documented_and_only_an_accepted_one_costs(
    make_app: AppFactory,
    http: aiohttp.ClientSession,
    replicate: FakeReplicate,
    elevenlabs: FakeElevenLabs,
    database_url: str,
) -> None:
    """Bodies that fit the schemas (with known users, bots and models now and then), bodies that break
    them, and any JSON at all. An accepted one may charge and run; any other changes nothing."""
    driver, document = await started(make_app, http, database_url=database_url)
    schemas = SchemaStrategies(document["components"]["schemas"], lifelike_overrides())

    def bodies(schema: dict[str, Any]) -> st.SearchStrategy[bytes]:
        drawn = weighted((3, schemas.fitting(schema)), (1, schemas.breaking(schema)), (1, any_json()))
        return drawn.map(lambda body: json.dumps(body).encode())

    requests = st.sampled_from(creation_operations(document)).flatmap(
        lambda operation: st.tuples(st.just(operation[0]), bodies(operation[1]))
    )
    accepted: set[str] = set()

    @FUZZ
    @given(request=requests, headers=idempotency_keys())
    def answered(request: tuple[str, bytes], headers: dict[str, str]) -> None:
        path, body = request
        generations_before = len(driver.run(generations_of(driver.app)))
        ledger_before = driver.run(charges_and_grants(driver.app))
        answer = driver.send("POST", path, data=body, headers={**AUTH, **headers})
        check_documented(document, path, "post", answer)
        if answer.status == 202:
            accepted.add(answer.json()["id"])
            read = driver.send("GET", f"/api/generations/{answer.json()['id']}", headers=AUTH)
            check_documented(document, "/api/generations/{id}", "get", read)
        else:
            assert len(driver.run(generations_of(driver.app))) == generations_before, answer
            assert driver.run(charges_and_grants(driver.app)) == ledger_before, answer

    await asyncio.to_thread(answered)
    settled = await all_settled(driver.app, timeout=60)
    assert {generation.id for generation in settled} == accepted
    # At most one paid call per accepted generation (Plan B: one attempt each), none for the rest.
    assert provider_requests(replicate, elevenlabs) <= 2 * len(accepted)
    assert len(replicate.creates) + len(replicate.training_creates) <= len(accepted)
    await _every_balance_is_its_ledger(driver.app)


async def _every_balance_is_its_ledger(app: App) -> None:
    assert app.services is not None
    async with app.services.db.sessions() as session:
        users = list(await session.scalars(select(User)))
        for user in users:
            total = await session.scalar(
                select(func.sum(LedgerEntry.amount)).where(LedgerEntry.user_id == user.id)
            )
            assert user.balance == int(total or 0) >= 0, user.telegram_id


async def test_every_edge_value_of_every_field_is_refused_or_unaffordable_and_costs_nothing(
    make_app: AppFactory,
    http: aiohttp.ClientSession,
    replicate: FakeReplicate,
    elevenlabs: FakeElevenLabs,
    database_url: str,
) -> None:
    """Each field of each kind (and the Idempotency-Key), one at a time, at each edge value of its types
    in an otherwise valid request: numbers past 64 bits, NUL, lone surrogates, the longest strings. With
    no stars to spend a request the app takes goes as far as the charge, rows written and all, then is
    refused 402; any other is refused 422. None may fail, and none may leave a trace."""
    driver, document = await started(make_app, http, database_url=database_url, new_user_bonus=0)
    schemas = SchemaStrategies(document["components"]["schemas"])
    nowhere = f"http://127.0.0.1:{closed_port()}"
    seed = {"telegram_id": USER, "bot_name": "image_bot", "username": "fox"}
    valid = {
        "/api/generation/text-to-image": {**seed, "prompt": "a fox"},
        "/api/generation/neuro-photo": {**seed, "prompt": "a fox"},
        "/api/generation/text-to-video": {**seed, "prompt": "a fox"},
        "/api/generation/image-to-video": {**seed, "prompt": "a fox", "image_url": f"{nowhere}/fox.png"},
        "/api/generation/text-to-speech": {**seed, "text": "hello"},
        "/api/generation/voice-avatar": {**seed, "audio_url": f"{nowhere}/voice.ogg"},
        "/api/generation/model-training": {**seed, "zip_url": f"{nowhere}/fox.zip", "trigger_word": "fox"},
    }
    operations = creation_operations(document)
    assert set(valid) == {path for path, _ in operations}
    properties = {path: schemas.resolve(schema)["properties"] for path, schema in operations}
    shared = set.intersection(*(set(names) for names in properties.values()))  # swept on one kind only
    before = await footprint(driver.app, replicate, elevenlabs)
    sent = 0
    for index, (path, named) in enumerate(properties.items()):
        for name, schema in named.items():
            if name in shared and index > 0:
                continue
            for value in schemas.edge_values(schema):
                answer = await driver.request(
                    "POST", path, json.dumps({**valid[path], name: value}).encode(), AUTH
                )
                assert answer.status in {402, 422}, (path, name, value, answer)
                sent += 1
    key_schema = document["paths"]["/api/generation/text-to-image"]["post"]["parameters"][0]["schema"]
    for key in schemas.edge_values(key_schema):
        if key and key.isprintable() and not any("\ud800" <= character <= "\udfff" for character in key):
            headers = {**AUTH, "Idempotency-Key": key}
            body = json.dumps(valid["/api/generation/text-to-image"]).encode()
            answer = await driver.request("POST", "/api/generation/text-to-image", body, headers)
            assert answer.status in {402, 422}, (key, answer)
    assert sent > 200
    assert await footprint(driver.app, replicate, elevenlabs) == before


async def test_a_wrong_bearer_token_is_refused_401_whatever_the_header(
    make_app: AppFactory, http: aiohttp.ClientSession, replicate: FakeReplicate, elevenlabs: FakeElevenLabs
) -> None:
    driver, document = await started(make_app, http)
    header_text = st.text(st.characters(blacklist_categories=("Cc", "Cs")), max_size=80)
    authorization = (
        header_text
        | st.builds(lambda token: f"Bearer {token}", header_text)
        | st.builds(
            lambda extra: f"Bearer {API_TOKEN}{extra}", header_text.filter(lambda text: text.strip() != "")
        )
    )
    operations = [
        ("POST", "/api/generation/text-to-image", "/api/generation/text-to-image"),
        ("GET", "/api/generations/{id}", "/api/generations/" + "a" * 32),
        ("GET", "/api/users/{bot_name}/{telegram_id}", f"/api/users/image_bot/{USER}"),
    ]
    body = json.dumps({"telegram_id": USER, "prompt": "a fox"}).encode()
    before = await footprint(driver.app, replicate, elevenlabs)

    @FUZZ
    @given(operation=st.sampled_from(operations), header=st.none() | authorization, keys=idempotency_keys())
    def refused(operation: tuple[str, str, str], header: str | None, keys: dict[str, str]) -> None:
        method, template, path = operation
        headers = {**keys, **({"Authorization": header} if header is not None else {})}
        answer = driver.send(method, path, data=body if method == "POST" else None, headers=headers)
        assert answer.status == 401, answer
        check_documented(document, template, method.lower(), answer)
        assert driver.run(footprint(driver.app, replicate, elevenlabs)) == before

    await asyncio.to_thread(refused)


async def test_any_path_value_names_nothing_and_is_answered_4xx(
    make_app: AppFactory, http: aiohttp.ClientSession, database_url: str
) -> None:
    """No generation or user exists yet: whatever the path says, it is 404 or 422, never a 5xx (on
    PostgreSQL a NUL in a query parameter was an error of the database)."""
    driver, document = await started(make_app, http, database_url=database_url)
    segment = (st.text(min_size=1, max_size=70) | st.from_regex(r"[0-9]{1,25}", fullmatch=True)).map(
        lambda text: quote(text, safe="")
    )
    paths = st.one_of(
        st.builds(lambda id_: ("/api/generations/{id}", f"/api/generations/{id_}"), segment),
        st.builds(
            lambda bot, user: ("/api/users/{bot_name}/{telegram_id}", f"/api/users/{bot}/{user}"),
            segment | st.just("image_bot"),
            segment,
        ),
    )

    @FUZZ
    @given(path=paths)
    def answered(path: tuple[str, str]) -> None:
        template, concrete = path
        answer = driver.send("GET", concrete, headers=AUTH)
        assert answer.status in {404, 422}, (concrete, answer)
        check_documented(document, template, "get", answer)

    await asyncio.to_thread(answered)
