"""What the HTTP handlers find on the app, under typed keys (set by web_app.build_web_app)."""

from __future__ import annotations

import asyncio
from typing import Any

from aiogram import Bot
from aiogram import Dispatcher as BotDispatcher
from aiohttp import web

from generation.dispatcher import Dispatcher
from generation.services import Services

SERVICES = web.AppKey("services", Services)
GENERATIONS = web.AppKey("generations", Dispatcher)
BOTS = web.AppKey("bots", dict[str, Bot])
BOT_DISPATCHER = web.AppKey("bot_dispatcher", BotDispatcher)  # only when the server runs bots
WEBHOOK_TASKS = web.AppKey("webhook_tasks", set[asyncio.Task[Any]])
