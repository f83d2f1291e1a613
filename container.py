"""The composition root: builds a process's services (database, providers, bots) from settings.

The only module besides the runners that knows every layer; `aibot run`, `aibot worker` and arq's
WorkerSettings all build their services here.
"""

from __future__ import annotations

from aiogram import Bot
from aiogram.client.default import DefaultBotProperties
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer

from bot.delivery import TelegramDelivery
from generation.catalog import load_catalog
from generation.delivery import ChatDelivery, NoDelivery
from generation.services import Services
from generation.store import Database
from providers.elevenlabs import ElevenLabsProvider
from providers.replicate import ReplicateProvider
from settings import Settings


def build_bots(settings: Settings) -> dict[str, Bot]:
    """One aiogram Bot per configured token, all through TELEGRAM_API_URL."""
    api = TelegramAPIServer.from_base(settings.telegram_api_url)
    return {
        name: Bot(
            token.get_secret_value(),
            session=AiohttpSession(api=api),
            default=DefaultBotProperties(parse_mode=None),
        )
        for name, token in settings.bot_tokens.items()
    }


async def build_services(
    settings: Settings, *, with_bots: bool, bots: dict[str, Bot] | None = None
) -> Services:
    if bots is None and with_bots:
        bots = build_bots(settings)
    delivery: ChatDelivery = TelegramDelivery(bots) if bots else NoDelivery()
    return Services(
        settings=settings,
        db=Database(settings.database_url),
        catalog=load_catalog(),
        replicate=ReplicateProvider(
            api_token=settings.replicate_api_token.get_secret_value()
            if settings.replicate_api_token
            else None,
            base_url=settings.replicate_base_url,
            poll_interval=settings.replicate_poll_interval,
            timeout=settings.provider_timeout,
        ),
        elevenlabs=ElevenLabsProvider(
            api_key=settings.elevenlabs_api_key.get_secret_value() if settings.elevenlabs_api_key else None,
            base_url=settings.elevenlabs_base_url,
        ),
        delivery=delivery,
    )


async def close_services(services: Services) -> None:
    await services.replicate.close()
    await services.elevenlabs.close()
    if isinstance(services.delivery, TelegramDelivery):
        for bot in services.delivery.bots.values():
            await bot.session.close()
    await services.db.close()
