"""The aiohttp app: HTTP API (SPEC §2.3), Telegram webhooks, health."""

from __future__ import annotations

import asyncio
import hmac
import json
import re
import uuid
from datetime import datetime
from typing import Any

from aiogram import Bot
from aiogram import Dispatcher as BotDispatcher
from aiogram.types import Update
from aiohttp import web
from loguru import logger

from generation import ledger, payments
from generation.callbacks import take_job_result
from generation.catalog import Kind
from generation.dispatcher import Dispatcher
from generation.ledger import InsufficientBalance
from generation.registry import CHECKERS, PIPELINES
from generation.requests import InvalidRequest, Problem, validate_request
from generation.services import Services
from generation.store import Generation, find_by_request_key, get_generation
from generation.users import find_user
from providers.replicate import verify_webhook

SERVICES = web.AppKey("services", Services)
GENERATIONS = web.AppKey("generations", Dispatcher)
BOTS = web.AppKey("bots", dict[str, Bot])
BOT_DISPATCHER = web.AppKey("bot_dispatcher", BotDispatcher)
WEBHOOK_TASKS = web.AppKey("webhook_tasks", set[asyncio.Task[Any]])

# Users of HTTP requests that name no bot when the server runs no bot: results stay in the database.
API_ONLY_BOT = "api"
MAX_BODY = 1024 * 1024


def build_web_app(
    services: Services,
    generations: Dispatcher,
    bots: dict[str, Bot],
    bot_dispatcher: BotDispatcher | None,
) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY)
    app[SERVICES] = services
    app[GENERATIONS] = generations
    app[BOTS] = bots
    app[WEBHOOK_TASKS] = set()
    if bot_dispatcher is not None:
        app[BOT_DISPATCHER] = bot_dispatcher
    app.router.add_post("/api/generation/{kind}", create_generation)
    app.router.add_get("/api/generations/{id}", read_generation)
    app.router.add_get("/api/users/{bot_name}/{telegram_id}", read_user)
    app.router.add_post("/webhooks/telegram/{bot_name}", telegram_webhook)
    app.router.add_post("/webhooks/replicate", replicate_webhook)
    app.router.add_get("/healthz", health)
    return app


def _error(status: int, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status)


def _check_bearer(request: web.Request) -> web.Response | None:
    token = request.app[SERVICES].settings.api_token
    if token is None:
        return _error(503, "the HTTP API is disabled: API_TOKEN is not set")
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip(), token.get_secret_value()):
        return web.json_response(
            {"error": "missing or wrong bearer token"}, status=401, headers={"WWW-Authenticate": "Bearer"}
        )
    return None


def _problems(problems: list[Problem]) -> web.Response:
    # SPEC §2.3: a 422 answers a JSON list of what is wrong.
    return web.json_response([problem.as_json() for problem in problems], status=422)


async def create_generation(request: web.Request) -> web.Response:
    if (denied := _check_bearer(request)) is not None:
        return denied
    services = request.app[SERVICES]
    kind = Kind.from_slug(request.match_info["kind"])
    if kind is None:
        return _error(404, f"unknown kind {request.match_info['kind']!r}", kinds=[k.slug for k in Kind])
    if kind not in PIPELINES:
        return _error(501, f"{kind.slug} is not available yet")
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return _problems([Problem("body", "invalid", {"detail": "the body is not valid JSON"})])
    if not isinstance(body, dict):
        return _problems([Problem("body", "invalid", {"detail": "the body must be a JSON object"})])
    try:
        valid = validate_request(kind, body, services.catalog, set(services.settings.bot_tokens))
    except InvalidRequest as invalid:
        return _problems(invalid.problems)

    bot_name = valid.request.bot_name or services.settings.default_bot_name or API_ONLY_BOT
    key = request.headers.get("Idempotency-Key", "").strip()
    if len(key) > 120:
        return _problems([Problem("Idempotency-Key", "invalid", {"detail": "at most 120 characters"})])
    # Scoped to the bot and user: two users' keys never collide. Without a key every request is new.
    request_key = f"http:{bot_name}:{valid.request.telegram_id}:{key or uuid.uuid4().hex}"
    checker = CHECKERS.get(kind)
    try:
        # Inputs that must be fetched to be judged (a training's ZIP); a repeat of a request already
        # recorded is answered from the record, without fetching anything again.
        if checker is not None and await find_by_request_key(services.db, request_key) is None:
            await checker(services, bot_name, valid.request.model_dump(mode="json"))
        submission = await request.app[GENERATIONS].submit(valid, request_key, bot_name)
    except InvalidRequest as invalid:
        return _problems(invalid.problems)
    except InsufficientBalance as error:
        return _error(402, "insufficient balance", needed=error.needed, balance=error.balance)
    generation = submission.generation
    return web.json_response(
        {"id": generation.id, "plan": submission.plan.value, "status": generation.status}, status=202
    )


async def read_generation(request: web.Request) -> web.Response:
    if (denied := _check_bearer(request)) is not None:
        return denied
    generation = await get_generation(request.app[SERVICES].db, request.match_info["id"])
    if generation is None:
        return _error(404, "no such generation")
    return web.json_response(describe(generation))


# Telegram user ids are positive and fit in 52 bits; anything else names no user.
TELEGRAM_ID_SHAPE = re.compile(r"^[1-9][0-9]{0,15}$")


async def read_user(request: web.Request) -> web.Response:
    """For operators: one user of one bot, with the balance, the recent ledger lines and orders."""
    if (denied := _check_bearer(request)) is not None:
        return denied
    raw_id = request.match_info["telegram_id"]
    if not TELEGRAM_ID_SHAPE.match(raw_id):
        return _problems([Problem("telegram_id", "invalid", {"detail": "a positive Telegram user id"})])
    services = request.app[SERVICES]
    async with services.db.sessions() as session:
        user = await find_user(session, request.match_info["bot_name"], int(raw_id))
        if user is None:
            return _error(404, "no such user of this bot")
        entries = await ledger.recent_entries(session, user.id, limit=20)
    orders = await payments.orders_of(services.db, user.id, limit=20)
    return web.json_response(
        {
            "bot_name": user.bot_name,
            "telegram_id": user.telegram_id,
            "username": user.username,
            "language": user.language,
            "balance": user.balance,
            "created_at": _iso(user.created_at),
            "ledger": [
                {
                    "operation": entry.operation_key,
                    "amount": entry.amount,
                    "balance_after": entry.balance_after,
                    "generation_id": entry.generation_id,
                    "note": entry.note,
                    "created_at": _iso(entry.created_at),
                }
                for entry in entries
            ],
            "orders": [
                {
                    "id": order.id,
                    "package": order.package,
                    "stars": order.stars,
                    "amount": order.amount,
                    "currency": payments.CURRENCY,
                    "status": order.status,
                    "charge_id": order.charge_id,
                    "refunded_stars": order.refunded_stars,
                    "created_at": _iso(order.created_at),
                    "paid_at": _iso(order.paid_at),
                    "refunded_at": _iso(order.refunded_at),
                }
                for order in orders
            ],
        }
    )


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


def describe(generation: Generation) -> dict[str, Any]:
    result = generation.result or {}
    return {
        "id": generation.id,
        "kind": generation.kind,
        "model": generation.model,
        "status": generation.status,
        "plan": generation.plan,
        "attempts": generation.attempts,
        "price": generation.price - generation.refunded,
        "charged": generation.price,
        "refunded": generation.refunded,
        "urls": result.get("urls", []),
        "result": result,  # the kind's own outcome too (e.g. a cloned voice_id)
        "error": generation.error,
        "created_at": generation.created_at.isoformat() if generation.created_at else None,
        "finished_at": generation.finished_at.isoformat() if generation.finished_at else None,
    }


async def telegram_webhook(request: web.Request) -> web.Response:
    bots = request.app[BOTS]
    bot = bots.get(request.match_info["bot_name"])
    if bot is None or BOT_DISPATCHER not in request.app:
        return _error(404, "no such bot")
    secret = request.app[SERVICES].settings.webhook_secret
    given = request.headers.get("X-Telegram-Bot-Api-Secret-Token", "")
    if secret is None or not hmac.compare_digest(given, secret.get_secret_value()):
        return _error(401, "wrong secret token")
    try:
        update = Update.model_validate(await request.json(), context={"bot": bot})
    except Exception:
        return _error(400, "not a Telegram update")
    # Answer Telegram at once; the update is handled in the background (Telegram resends on slow answers).
    task = asyncio.create_task(request.app[BOT_DISPATCHER].feed_update(bot, update))
    tasks = request.app[WEBHOOK_TASKS]
    tasks.add(task)
    task.add_done_callback(tasks.discard)
    return web.json_response({"ok": True})


async def replicate_webhook(request: web.Request) -> web.Response:
    """A prediction's or training's final state, signed by Replicate; verified before anything is read."""
    services = request.app[SERVICES]
    secret = services.settings.replicate_webhook_secret
    if secret is None:
        return _error(404, "Replicate webhooks are not configured (REPLICATE_WEBHOOK_SECRET)")
    body = await request.text()
    headers = {name.lower(): value for name, value in request.headers.items()}
    if not verify_webhook(headers, body, secret.get_secret_value()):
        logger.warning("Replicate webhook with a bad or missing signature refused")
        return _error(401, "bad signature")
    try:
        payload = json.loads(body)
    except json.JSONDecodeError:
        return _error(400, "not JSON")
    generation_id = request.query.get("generation", "")
    step = request.query.get("step", "")
    if not isinstance(payload, dict) or not generation_id or not step:
        return _error(400, "a callback names its generation and step")
    generation = await take_job_result(services.db, headers["webhook-id"], generation_id, step, payload)
    if generation is not None:
        logger.bind(generation=generation.id, plan=generation.plan).info("{} result arrived by webhook", step)
        queue = request.app[GENERATIONS].queue
        if generation.plan == "A" and queue is not None:
            try:
                await asyncio.wait_for(queue.wake(generation.id), timeout=services.settings.redis_timeout)
            except Exception as error:  # the deferred retry comes anyway; the result is journaled
                logger.warning("could not wake the job: {!r}", error)
    return web.json_response({"ok": True})


async def health(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    generations = request.app[GENERATIONS]
    database_ok = await services.db.ping()
    redis_ok = await generations.queue.ping() if generations.queue is not None else None
    mode, source = await generations.mode() if database_ok else (None, None)
    plan = (await generations.current_plan(redis_ok)).value if database_ok else None
    body = {
        "status": "ok" if database_ok else "unavailable",
        "database": database_ok,
        "redis": redis_ok,
        "plan": plan,
        "mode": mode.value if mode else None,
        "mode_source": source,
        "breaker": generations.breaker.state.value,
    }
    if not database_ok:
        logger.warning("health check: database not answering")
    return web.json_response(body, status=200 if database_ok else 503)
