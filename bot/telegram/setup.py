"""The aiogram Dispatcher serving every bot: routers, middlewares, and what handlers get injected."""

from __future__ import annotations

from aiogram import Bot, Dispatcher
from aiogram.types import BotCommand
from loguru import logger

from bot.http.secrets import telegram_webhook_secret
from bot.telegram.conversation_storage import DatabaseStorage
from bot.telegram.flood import FloodLimiter, FloodMiddleware
from bot.telegram.middlewares import UserMiddleware
from bot.telegram.routers import cancel, hints, history, image, lora, payments, speech, start, unknown, video
from bot.telegram.routers.admin import build_admin_router
from bot.telegram.turns import Turns, TurnTakingDispatcher
from generation.dispatcher import Dispatcher as GenerationDispatcher
from generation.services import Services

# Commands shown in Telegram's menu, per language.
MENU = {
    "en": [
        ("image", "Images from a prompt"),
        ("model", "Choose the image model"),
        ("video", "A video from a prompt"),
        ("animate", "Animate a photo (as its caption)"),
        ("speech", "A voice message from text"),
        ("voice", "Clone your voice"),
        ("train", "Train your own model"),
        ("photo", "Photos from your model"),
        ("balance", "Balance and operations"),
        ("history", "Recent generations, repeat one"),
        ("buy", "Top up with Telegram Stars"),
        ("cancel", "Stop and get the stars back"),
        ("lang", "Switch language"),
        ("help", "Commands and prices"),
        ("paysupport", "Help with a payment"),
        ("terms", "Terms of payment"),
    ],
    "ru": [
        ("image", "Изображения по запросу"),
        ("model", "Выбрать модель"),
        ("video", "Видео по запросу"),
        ("animate", "Оживить фото (в подписи)"),
        ("speech", "Голосовое из текста"),
        ("voice", "Клонировать голос"),
        ("train", "Обучить свою модель"),
        ("photo", "Фото от вашей модели"),
        ("balance", "Баланс и операции"),
        ("history", "Последние генерации, повтор"),
        ("buy", "Пополнить звёздами Telegram"),
        ("cancel", "Остановить и вернуть звёзды"),
        ("lang", "Сменить язык"),
        ("help", "Команды и цены"),
        ("paysupport", "Помощь с оплатой"),
        ("terms", "Условия оплаты"),
    ],
}


def build_bot_dispatcher(
    services: Services, generations: GenerationDispatcher, bots: dict[str, Bot]
) -> Dispatcher:
    # Conversation state lives in the database: it survives restarts and is shared by every process.
    bot_names = {bot.id: name for name, bot in bots.items()}
    # Each update in its turn: a burst does not slow down everything else the process answers.
    turns = Turns()
    services.requests_in_flight.append(turns.in_flight)
    dispatcher = TurnTakingDispatcher(
        turns=turns,
        storage=DatabaseStorage(services.db, bot_names),
        services=services,
        generations=generations,
        bots=bots,
    )
    # At the door: a flood is refused before any handler, so before anything is charged.
    limiter = FloodLimiter(services.settings.flood_limit, services.settings.flood_window)
    dispatcher.update.outer_middleware(FloodMiddleware(services, bot_names, limiter))
    middleware = UserMiddleware(services, bot_names)
    dispatcher.message.outer_middleware(middleware)
    dispatcher.callback_query.outer_middleware(middleware)
    dispatcher.pre_checkout_query.outer_middleware(middleware)
    dispatcher.message.outer_middleware(speech.EndRecordingWaitOnCommand())
    dispatcher.include_routers(
        payments.build_router(),
        start.build_router(),
        cancel.build_router(),
        image.build_router(),
        video.build_router(),
        speech.build_router(),
        lora.build_router(),
        history.build_router(),
        build_admin_router(services.settings.admin_ids),
        payments.build_refund_router(services.settings.admin_ids),
        unknown.build_router(),
        hints.build_router(),  # last: only what no router (and no pending conversation) took
    )
    return dispatcher


async def publish_menus(bots: dict[str, Bot]) -> None:
    for bot in bots.values():
        for language, items in MENU.items():
            commands = [BotCommand(command=name, description=description) for name, description in items]
            await bot.set_my_commands(commands, language_code=None if language == "en" else language)


async def set_webhooks(bots: dict[str, Bot], base_url: str, master_secret: str, max_connections: int) -> None:
    """Point each bot's webhook at this server, each with its own secret (derived from WEBHOOK_SECRET,
    see bot/http/secrets.py), which Telegram sends back with every update of that bot."""
    for name, bot in bots.items():
        await bot.set_webhook(
            f"{base_url}/webhooks/telegram/{name}",
            secret_token=telegram_webhook_secret(master_secret, name),
            max_connections=max_connections,
        )
    logger.info("webhooks set for {} bot(s)", len(bots))
