"""The aiohttp app (SPEC §2.3): the API, the Telegram and Replicate webhooks, and health, on one server."""

from __future__ import annotations

from aiogram import Bot
from aiogram import Dispatcher as BotDispatcher
from aiohttp import web

from bot.http import api, health, metrics, openapi, webhooks
from bot.http.dashboard import setup_dashboard
from bot.http.ingest import UpdatesInFlight
from bot.http.keys import BOT_DISPATCHER, BOTS, GENERATIONS, SERVICES, UPDATES_IN_FLIGHT
from bot.http.responses import refusals_as_json, unavailable_as_503
from bot.web_chat import WebChat
from bot.web_chat import routes as web_chat_routes
from generation.dispatcher import Dispatcher
from generation.services import Services

MAX_BODY = 1024 * 1024


def build_web_app(
    services: Services,
    generations: Dispatcher,
    bots: dict[str, Bot],
    bot_dispatcher: BotDispatcher | None,
    readiness: health.Readiness | None = None,
    web_chat: WebChat | None = None,
) -> web.Application:
    """`readiness`: what /readyz answers and where the process says it drains (by default: ready
    while the database answers). `web_chat`: serve the browser chat under /chat."""
    readiness = readiness or health.Readiness({"database": services.db.ping})
    services.requests_in_flight.append(readiness.in_flight)
    new_work = {"/api/generation/{kind}", "/webhooks/telegram/{bot_name}", *web_chat_routes.TAKING_WORK}
    app = web.Application(
        client_max_size=MAX_BODY,
        middlewares=[
            refusals_as_json,
            health.refuse_new_work_while_draining(readiness, new_work),
            unavailable_as_503,
        ],
    )
    app[health.READINESS] = readiness
    app[SERVICES] = services
    app[GENERATIONS] = generations
    app[BOTS] = bots
    app[UPDATES_IN_FLIGHT] = UpdatesInFlight(services.settings.updates_in_flight)
    if bot_dispatcher is not None:
        app[BOT_DISPATCHER] = bot_dispatcher
    app.router.add_post("/api/generation/{kind}", api.create_generation)
    app.router.add_get("/api/generations/{id}", api.read_generation)
    app.router.add_get("/api/users/{bot_name}/{telegram_id}", api.read_user)
    app.router.add_post("/webhooks/telegram/{bot_name}", webhooks.telegram_webhook)
    app.router.add_post("/webhooks/replicate", webhooks.replicate_webhook)
    app.router.add_get("/healthz", health.health)
    app.router.add_get("/livez", health.livez)
    app.router.add_get("/readyz", health.readyz)
    app.router.add_get("/openapi.json", openapi.serve_openapi)
    metrics_token = services.settings.metrics_token
    app.router.add_get("/metrics", metrics.metrics_handler(metrics_token, metrics.app_gauges))
    setup_dashboard(app)
    if web_chat is not None:
        web_chat_routes.setup_web_chat(app, web_chat)
    return app
