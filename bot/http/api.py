"""The HTTP API (SPEC §2.3): submit a generation through the intake, read a generation, read a user."""

from __future__ import annotations

import re
from contextlib import AbstractContextManager, nullcontext
from datetime import datetime
from typing import Any

from aiohttp import web

from bot.http.keys import GENERATIONS, SERVICES
from bot.http.request_body import UnreadableBody, read_json_object
from bot.http.responses import json_error, json_problems
from bot.http.secrets import has_bearer_token
from generation import intake, ledger, payments
from generation.catalog import Kind
from generation.log_context import about_requester
from generation.registry import spec_of
from generation.requests import MAX_TELEGRAM_ID, Problem
from generation.store import GENERATION_ID_SHAPE, Generation, get_generation
from generation.users import find_user
from settings import Settings


def _check_bearer(request: web.Request) -> web.Response | None:
    token = request.app[SERVICES].settings.api_token
    if token is None:
        return json_error(503, "the HTTP API is disabled: API_TOKEN is not set")
    if not has_bearer_token(request.headers.get("Authorization", ""), token):
        return web.json_response(
            {"error": "missing or wrong bearer token"}, status=401, headers={"WWW-Authenticate": "Bearer"}
        )
    return None


async def create_generation(request: web.Request) -> web.Response:
    if (denied := _check_bearer(request)) is not None:
        return denied
    kind = Kind.from_slug(request.match_info["kind"])
    if kind is None:
        return json_error(404, f"unknown kind {request.match_info['kind']!r}", kinds=[k.slug for k in Kind])
    if spec_of(kind) is None:
        return json_error(501, f"{kind.slug} is not available yet")
    try:
        body = await read_json_object(request)
    except UnreadableBody as unreadable:
        return json_problems([unreadable.problem])
    origin = intake.FromApi(request.headers.get("Idempotency-Key", "").strip())
    with _about_requester(body, request.app[SERVICES].settings):
        outcome = await intake.submit(request.app[GENERATIONS], intake.Incoming(kind, body, origin))
    if isinstance(outcome, intake.Refused):
        return json_problems(outcome.problems)
    if isinstance(outcome, intake.Unaffordable):
        return json_error(402, "insufficient balance", needed=outcome.needed, balance=outcome.balance)
    generation = outcome.generation
    return web.json_response(
        {"id": generation.id, "plan": outcome.plan.value, "status": generation.status}, status=202
    )


def _about_requester(body: dict[str, Any], settings: Settings) -> AbstractContextManager[None]:
    """The log context of the request's record and charge lines: its user and bot, taken from the
    body only when they have the shape validation accepts (a client's text in a log line could pass
    for another field, or another line)."""
    telegram_id, named = body.get("telegram_id"), body.get("bot_name")
    if named is None:
        bot = settings.default_bot_name or intake.API_ONLY_BOT  # as the intake chooses it
    elif isinstance(named, str) and named in settings.bot_tokens:
        bot = named
    else:
        return nullcontext()
    if type(telegram_id) is not int:  # not a bool either
        return nullcontext()
    return about_requester(telegram_id, bot)


# The longest bot name the users table holds.
MAX_BOT_NAME = 64


async def read_generation(request: web.Request) -> web.Response:
    if (denied := _check_bearer(request)) is not None:
        return denied
    if not GENERATION_ID_SHAPE.fullmatch(request.match_info["id"]):
        return json_error(404, "no such generation")
    generation = await get_generation(request.app[SERVICES].db, request.match_info["id"])
    if generation is None:
        return json_error(404, "no such generation")
    return web.json_response(describe(generation))


# Telegram user ids are positive and fit in 52 bits; anything else names no user.
TELEGRAM_ID_SHAPE = re.compile(r"[1-9][0-9]{0,15}")


async def read_user(request: web.Request) -> web.Response:
    """For operators: one user of one bot, with the balance, the recent ledger lines and orders."""
    if (denied := _check_bearer(request)) is not None:
        return denied
    raw_id = request.match_info["telegram_id"]
    if not TELEGRAM_ID_SHAPE.fullmatch(raw_id) or int(raw_id) > MAX_TELEGRAM_ID:
        return json_problems([Problem("telegram_id", "invalid", {"detail": "a positive Telegram user id"})])
    bot_name = request.match_info["bot_name"]
    if len(bot_name) > MAX_BOT_NAME or not bot_name.isprintable():  # no NUL, no surrogate: no such bot
        return json_error(404, "no such user of this bot")
    services = request.app[SERVICES]
    async with services.db.sessions() as session:
        user = await find_user(session, bot_name, int(raw_id))
        if user is None:
            return json_error(404, "no such user of this bot")
        entries = await ledger.recent_entries(session, user.id, limit=20)
        orders = await payments.recent_orders(session, user.id, limit=20)
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
