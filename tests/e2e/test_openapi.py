"""The OpenAPI document (SPEC §2.3): served without auth, made from the request models themselves,
covering every route the app serves, and the app's real answers are shaped as it says."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
from pydantic import TypeAdapter

from app import App
from bot.http import openapi
from generation.catalog import Kind
from generation.requests import REQUEST_TYPES
from tests.conftest import API_TOKEN, AppFactory
from tests.e2e.helpers import USER, all_settled
from tests.fakes.telegram import FakeTelegram

AUTH = {"Authorization": f"Bearer {API_TOKEN}"}


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def base(app: App) -> str:
    return f"http://127.0.0.1:{app.http_port}"


async def served_document(http: aiohttp.ClientSession, app: App) -> dict[str, Any]:
    async with http.get(base(app) + "/openapi.json") as response:  # no Authorization header
        assert response.status == 200
        document: dict[str, Any] = await response.json()
        return document


async def test_the_document_describes_each_kind_with_its_own_request_model(
    make_app: AppFactory, http: aiohttp.ClientSession
) -> None:
    app = await make_app()
    document = await served_document(http, app)
    assert document["openapi"].startswith("3.1.")
    schemas = document["components"]["schemas"]
    for kind in Kind:
        operation = document["paths"][f"/api/generation/{kind.slug}"]["post"]
        body = operation["requestBody"]["content"]["application/json"]["schema"]
        model = REQUEST_TYPES[kind]
        assert body == {"$ref": f"#/components/schemas/{model.__name__}"}
        # Exactly what pydantic validates with, so the document cannot say other than the code does.
        assert schemas[model.__name__] == model.model_json_schema(ref_template="#/components/schemas/{model}")
        assert operation["security"] == [{"bearer": []}]
        assert {"202", "401", "402", "422"} <= set(operation["responses"])
        assert [parameter["name"] for parameter in operation["parameters"]] == ["Idempotency-Key"]
    assert {"minimum": 1, "maximum": 4}.items() <= schemas["TextToImageRequest"]["properties"][
        "num_images"
    ].items()


async def test_every_route_the_app_serves_is_documented_and_every_reference_resolves(
    make_app: AppFactory, http: aiohttp.ClientSession
) -> None:
    app = await make_app()
    document = await served_document(http, app)
    assert app.web_runner is not None
    # The dashboard (/admin...) is pages for people, not the API.
    served = {
        (route.method.lower(), route.resource.canonical)
        for route in app.web_runner.app.router.routes()
        if route.method != "HEAD"
        and route.resource is not None
        and not route.resource.canonical.startswith("/admin")
    }
    documented = {
        (method, "/api/generation/{kind}" if path.startswith("/api/generation/") else path)
        for path, item in document["paths"].items()
        for method in item
    }
    assert served == documented
    for reference in _references(document):
        name = reference.removeprefix("#/components/schemas/")
        assert name in document["components"]["schemas"], reference


def _references(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from _references(value)
    elif isinstance(node, list):
        for item in node:
            yield from _references(item)


async def test_the_apps_answers_are_shaped_as_documented(
    make_app: AppFactory, http: aiohttp.ClientSession, telegram: FakeTelegram
) -> None:
    app = await make_app(new_user_bonus=3)
    url = base(app)
    body = {"telegram_id": USER, "bot_name": "image_bot", "prompt": "a fox"}
    async with http.post(f"{url}/api/generation/text-to-image", json=body, headers=AUTH) as response:
        assert response.status == 202
        accepted = openapi.Accepted.model_validate(await response.json())
    await all_settled(app, 1)
    async with http.get(f"{url}/api/generations/{accepted.id}", headers=AUTH) as response:
        generation = openapi.GenerationAnswer.model_validate(await response.json())
        assert (generation.status, generation.price) == ("done", 1)
    async with http.get(f"{url}/api/users/image_bot/{USER}", headers=AUTH) as response:
        user = openapi.UserAnswer.model_validate(await response.json())
        assert user.balance == 2 and [line.amount for line in user.ledger] == [-1, 3]
    async with http.post(
        f"{url}/api/generation/text-to-image", json={**body, "num_images": 4}, headers=AUTH
    ) as response:
        assert response.status == 402
        openapi.Unaffordable.model_validate(await response.json())
    async with http.post(f"{url}/api/generation/text-to-image", json={"prompt": 5}, headers=AUTH) as response:
        assert response.status == 422
        problems = TypeAdapter(list[openapi.RequestProblem]).validate_python(await response.json())
        assert {problem.field for problem in problems} == {"telegram_id", "prompt"}
    for method, path in [("POST", "/api/generation/text-to-image"), ("GET", "/api/nowhere")]:
        async with http.request(method, url + path, json=body) as response:
            assert response.status in {401, 404}
            openapi.ErrorAnswer.model_validate(await response.json())
