"""Webhooks: Telegram's updates (webhook mode) handed to the bots' dispatcher, and Replicate's callbacks
with a prediction's or training's final state."""

from __future__ import annotations

import asyncio
import secrets

from aiogram.types import Update
from aiohttp import web
from loguru import logger

from bot.http.keys import BOT_DISPATCHER, BOTS, GENERATIONS, SERVICES, UPDATES_IN_FLIGHT
from bot.http.request_body import UnreadableBody, parse_json_object
from bot.http.responses import is_unavailable, json_error
from bot.http.secrets import TELEGRAM_WEBHOOK_HEADER, same_secret, telegram_webhook_secret
from generation.callbacks import WAITING_STEPS, take_job_result
from generation.store import GENERATION_ID_SHAPE
from providers.replicate import verify_webhook

# Seconds Telegram is asked to wait before delivering a refused update again.
RETRY_AFTER = "1"
# The key secrets are derived with when WEBHOOK_SECRET is not set: random, so no header ever matches.
_UNGUESSABLE_KEY = secrets.token_hex(32)


async def telegram_webhook(request: web.Request) -> web.Response:
    """An update for bot `bot_name`, with that bot's own secret (see bot/http/secrets.py). The secret is
    checked before anything else, and every refusal (unknown bot, no secret, a wrong one, no bots served
    here) gets the same answer in about the same time: the answers do not tell which bot names exist."""
    name = request.match_info["bot_name"]
    bot = request.app[BOTS].get(name)
    master = request.app[SERVICES].settings.webhook_secret
    configured = master is not None and bool(master.get_secret_value())
    # Without WEBHOOK_SECRET nothing is accepted, yet the same work is done, with a key nobody knows
    # (an empty key would make every bot's secret computable).
    key = master.get_secret_value() if master is not None and configured else _UNGUESSABLE_KEY
    given = request.headers.get(TELEGRAM_WEBHOOK_HEADER, "")
    # Derived for unknown names too: a refusal costs the same HMAC and comparison as an acceptance.
    matches = same_secret(given, telegram_webhook_secret(key, name))
    if not (matches and configured and bot is not None and BOT_DISPATCHER in request.app):
        return json_error(401, "unauthorized")
    try:
        update = Update.model_validate(await request.json(), context={"bot": bot})
    except Exception:
        return json_error(400, "not a Telegram update")
    in_flight = request.app[UPDATES_IN_FLIGHT]
    if not in_flight.try_enter():
        return _try_again_later("too many updates in flight")
    try:
        await request.app[BOT_DISPATCHER].feed_update(bot, update)
    except Exception as error:
        if not is_unavailable(error):
            # A handler's bug, or an update the database cannot take, fails the same way every time:
            # an error answer would only make Telegram retry it and hold back the updates behind it.
            logger.exception("update {} failed in its handler", update.update_id)
            return web.json_response({"ok": True})
        # Another delivery may not meet it (see responses.py).
        logger.warning("update {} not handled now ({!r}): Telegram sends it again", update.update_id, error)
        return _try_again_later("not handled now")
    finally:
        in_flight.leave()
    return web.json_response({"ok": True})


def _try_again_later(reason: str) -> web.Response:
    response = json_error(503, reason)
    response.headers["Retry-After"] = RETRY_AFTER
    return response


async def replicate_webhook(request: web.Request) -> web.Response:
    """A prediction's or training's final state, signed by Replicate; verified before anything is read."""
    services = request.app[SERVICES]
    secret = services.settings.replicate_webhook_secret
    if secret is None:
        return json_error(404, "Replicate webhooks are not configured (REPLICATE_WEBHOOK_SECRET)")
    body = await request.text()
    headers = {name.lower(): value for name, value in request.headers.items()}
    if not verify_webhook(headers, body, secret.get_secret_value()):
        logger.warning("Replicate webhook with a bad or missing signature refused")
        return json_error(401, "bad signature")
    try:
        payload = parse_json_object(body)
    except UnreadableBody as unreadable:
        return json_error(400, str(unreadable))
    generation_id = request.query.get("generation", "")
    step = request.query.get("step", "")
    # Checked before the database sees them: a NUL byte, say, is no id PostgreSQL can even compare.
    if not GENERATION_ID_SHAPE.fullmatch(generation_id) or step not in WAITING_STEPS:
        return json_error(400, "a callback names its generation and step")
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
