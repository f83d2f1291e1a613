"""What the HTTP handlers find on the app, under typed keys (set by web_app.build_web_app)."""

from __future__ import annotations

from aiogram import Bot
from aiogram import Dispatcher as BotDispatcher
from aiohttp import web

from bot.http.ingest import UpdatesInFlight
from generation.dispatcher import Dispatcher
from generation.services import Services

SERVICES = web.AppKey("services", Services)
GENERATIONS = web.AppKey("generations", Dispatcher)
BOTS = web.AppKey("bots", dict[str, Bot])
BOT_DISPATCHER = web.AppKey("bot_dispatcher", BotDispatcher)  # only when the server runs bots
UPDATES_IN_FLIGHT = web.AppKey("updates_in_flight", UpdatesInFlight)
