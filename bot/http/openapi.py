"""The OpenAPI 3.1 document of the HTTP API (SPEC §2.3), served without auth at GET /openapi.json.

Built from the code it describes, so it cannot drift from it: each kind's request body is that kind's
pydantic request model (generation/requests.py) as JSON Schema, and each answer is a model below that
the tests hold the app's real answers to (tests/e2e/test_openapi.py).
"""

from __future__ import annotations

import json
from functools import cache
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from bot.http.api import MAX_BOT_NAME, TELEGRAM_ID_SHAPE
from generation.catalog import Kind
from generation.intake import MAX_IDEMPOTENCY_KEY
from generation.registry import spec_of
from generation.requests import MAX_TELEGRAM_ID, REQUEST_TYPES
from generation.store import GENERATION_ID_SHAPE, GenerationStatus

OPENAPI_VERSION = "3.1.0"
API_VERSION = "1.0.0"
SCHEMAS = "#/components/schemas/"
OBJECT = {"type": "object"}


class _Answer(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Accepted(_Answer):
    """The generation is durably recorded (and charged); it runs on plan A (queue) or B (inline)."""

    id: str
    plan: Literal["A", "B"]
    status: GenerationStatus


class RequestProblem(_Answer):
    """One thing wrong with a request; a 422 answers a list of them."""

    field: str = Field(description="the body's field, a header (Idempotency-Key) or `body`")
    code: str = Field(description="stable: `missing`, `invalid`, `idempotency_key_reused`...")
    message: str


class ErrorAnswer(BaseModel):
    """Any other refusal: what went wrong, and sometimes more (e.g. the kinds there are)."""

    model_config = ConfigDict(extra="allow")

    error: str


class Unaffordable(_Answer):
    error: Literal["insufficient balance"]
    needed: int
    balance: int


class GenerationAnswer(_Answer):
    id: str
    kind: str
    model: str
    status: GenerationStatus
    plan: Literal["A", "B"]
    attempts: int
    price: int = Field(description="what the user paid in the end: charged less refunded")
    charged: int
    refunded: int
    urls: list[str]
    result: dict[str, Any] = Field(description="the kind's own outcome, e.g. a cloned voice_id")
    error: str | None
    created_at: str | None
    finished_at: str | None


class LedgerLine(_Answer):
    operation: str
    amount: int
    balance_after: int
    generation_id: str | None
    note: str | None
    created_at: str | None


class OrderLine(_Answer):
    id: str
    package: str
    stars: int
    amount: int
    currency: Literal["XTR"]
    status: str
    charge_id: str | None
    refunded_stars: int
    created_at: str | None
    paid_at: str | None
    refunded_at: str | None


class UserAnswer(_Answer):
    bot_name: str
    telegram_id: int
    username: str | None
    language: str
    balance: int
    created_at: str | None
    ledger: list[LedgerLine]
    orders: list[OrderLine]


ANSWERS: tuple[type[BaseModel], ...] = (
    Accepted,
    RequestProblem,
    ErrorAnswer,
    Unaffordable,
    GenerationAnswer,
    UserAnswer,
)


@cache
def openapi_document() -> dict[str, Any]:
    # Request bodies as the app takes them (validation), answers as it gives them (serialization).
    models: list[tuple[type[BaseModel], JsonSchemaMode]] = [
        *((REQUEST_TYPES[kind], "validation") for kind in Kind),
        *((model, "serialization") for model in ANSWERS),
    ]
    _, definitions = models_json_schema(models, ref_template=SCHEMAS + "{model}")
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "aibot HTTP API",
            "version": API_VERSION,
            "description": (
                "Submit AI generations for a Telegram user of one of the bots, and read them back. "
                "Bad input is answered 422 with a list of problems and costs nothing."
            ),
        },
        "paths": {
            **{f"/api/generation/{kind.slug}": _create_generation(kind) for kind in Kind if spec_of(kind)},
            "/api/generations/{id}": _read_generation(),
            "/api/users/{bot_name}/{telegram_id}": _read_user(),
            **_health_paths(),
            **_webhook_paths(),
            "/openapi.json": {
                "get": {
                    "operationId": "openapi",
                    "summary": "This document",
                    "responses": {"200": _json("the OpenAPI document", OBJECT)},
                }
            },
        },
        "components": {
            "schemas": definitions["$defs"],
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "description": "API_TOKEN"}},
        },
    }


async def serve_openapi(request: web.Request) -> web.Response:
    return web.Response(text=_document_text(), content_type="application/json")


@cache
def _document_text() -> str:
    return json.dumps(openapi_document())


def _ref(name: str) -> dict[str, str]:
    return {"$ref": SCHEMAS + name}


def _json(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return _json(description, _ref("ErrorAnswer"))


PROBLEMS = _json("what is wrong with the request", {"type": "array", "items": _ref("RequestProblem")})
UNAUTHORIZED = _error("missing or wrong bearer token")
API_DISABLED = _error(
    "not serving now: API_TOKEN is not set, or (with Retry-After) the database does not answer or the "
    "server is stopping"
)


def _create_generation(kind: Kind) -> dict[str, Any]:
    request_model = REQUEST_TYPES[kind]
    return {
        "post": {
            "operationId": f"create_{kind.value}",
            "summary": f"Submit a {kind.slug} generation",
            "security": [{"bearer": []}],
            "parameters": [
                {
                    "name": "Idempotency-Key",
                    "in": "header",
                    "required": False,
                    "description": (
                        "A repeat with the same key (for the same bot and user) and the same body answers "
                        "the same generation; the same key with another body is refused (422, "
                        "`idempotency_key_reused`). Without it, every call is a new generation."
                    ),
                    "schema": {"type": "string", "maxLength": MAX_IDEMPOTENCY_KEY, "pattern": "^[ -~]*$"},
                }
            ],
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": _ref(request_model.__name__)}},
            },
            "responses": {
                "202": _json("recorded (and charged); runs on the plan named", _ref("Accepted")),
                "401": UNAUTHORIZED,
                "402": _json("the user's balance is too low", _ref("Unaffordable")),
                "413": _error("the body is larger than the server takes"),
                "422": PROBLEMS,
                "503": API_DISABLED,
            },
        }
    }


def _read_generation() -> dict[str, Any]:
    return {
        "get": {
            "operationId": "read_generation",
            "summary": "A generation: status, plan, attempts, price, result URLs or error",
            "security": [{"bearer": []}],
            "parameters": [
                {
                    "name": "id",
                    "in": "path",
                    "required": True,
                    "schema": {"type": "string", "pattern": f"^{GENERATION_ID_SHAPE.pattern}$"},
                }
            ],
            "responses": {
                "200": _json("the generation", _ref("GenerationAnswer")),
                "401": UNAUTHORIZED,
                "404": _error("no such generation"),
                "503": API_DISABLED,
            },
        }
    }


def _read_user() -> dict[str, Any]:
    return {
        "get": {
            "operationId": "read_user",
            "summary": "One user of one bot: balance, recent ledger lines and orders",
            "security": [{"bearer": []}],
            "parameters": [
                {
                    "name": "bot_name",
                    "in": "path",
                    "required": True,
                    "schema": {"type": "string", "minLength": 1, "maxLength": MAX_BOT_NAME},
                },
                {
                    "name": "telegram_id",
                    "in": "path",
                    "required": True,
                    "schema": {
                        "type": "string",
                        "pattern": f"^{TELEGRAM_ID_SHAPE.pattern}$",
                        "description": f"a positive integer, at most {MAX_TELEGRAM_ID}",
                    },
                },
            ],
            "responses": {
                "200": _json("the user", _ref("UserAnswer")),
                "401": UNAUTHORIZED,
                "404": _error("no such user of this bot"),
                "422": PROBLEMS,
                "503": API_DISABLED,
            },
        }
    }


def _health_paths() -> dict[str, Any]:
    def probe(operation: str, summary: str, body: dict[str, Any]) -> dict[str, Any]:
        return {
            "get": {
                "operationId": operation,
                "summary": summary,
                "responses": {"200": body, "503": {**body, "description": "not serving"}},
            }
        }

    text = {"description": "a short reason", "content": {"text/plain": {"schema": {"type": "string"}}}}
    return {
        "/healthz": probe(
            "health",
            "Liveness and readiness; with the bearer token also the database, Redis and the plan in force",
            _json("the status (and details for the token)", OBJECT),
        ),
        "/livez": probe("livez", "The process's event loop answers", text),
        "/readyz": probe("readyz", "The process takes work: not draining, and what it needs answers", text),
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "summary": "Prometheus metrics (text format); with METRICS_TOKEN set, for that bearer token",
                "responses": {
                    "200": {**text, "description": "the metrics"},
                    "401": _error("METRICS_TOKEN is set and the request does not carry it"),
                },
            }
        },
    }


def _webhook_paths() -> dict[str, Any]:
    def webhook(operation: str, summary: str, parameters: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "post": {
                "operationId": operation,
                "summary": summary,
                "parameters": parameters,
                "requestBody": {"required": True, "content": {"application/json": {"schema": OBJECT}}},
                "responses": {
                    "200": {"description": "taken"},
                    "4XX": {"description": "refused: not authentic, or not understood"},
                    "503": {"description": "not taken now: the sender delivers it again"},
                },
            }
        }

    def header(name: str) -> dict[str, Any]:
        return {"name": name, "in": "header", "required": True, "schema": {"type": "string"}}

    def query(name: str, description: str) -> dict[str, Any]:
        schema = {"type": "string"}
        return {"name": name, "in": "query", "required": True, "description": description, "schema": schema}

    return {
        "/webhooks/telegram/{bot_name}": webhook(
            "telegram_webhook",
            "A Telegram update for one bot (webhook mode), with that bot's secret token header",
            [
                {"name": "bot_name", "in": "path", "required": True, "schema": {"type": "string"}},
                header("X-Telegram-Bot-Api-Secret-Token"),
            ],
        ),
        "/webhooks/replicate": webhook(
            "replicate_webhook",
            "A Replicate prediction's or training's final state, signed (Standard Webhooks)",
            [
                query("generation", "the generation the callback is for (set when the job was created)"),
                query("step", "the step of its journal that awaits it"),
                header("webhook-id"),
                header("webhook-timestamp"),
                header("webhook-signature"),
            ],
        ),
    }
