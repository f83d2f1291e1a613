"""The aiogram Dispatcher serving every bot: routers, middlewares, and what handlers get injected."""

from __future__ import annotations

from aiogram import Bot, Dispatcher
from aiogram.types import BotCommand

from bot.middlewares import UserMiddleware
from bot.routers import cancel, image, lora, speech, start, unknown, video
from bot.routers.admin import build_admin_router
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
        ("cancel", "Stop and get the stars back"),
        ("lang", "Switch language"),
        ("help", "Commands and prices"),
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
        ("cancel", "Остановить и вернуть звёзды"),
        ("lang", "Сменить язык"),
        ("help", "Команды и цены"),
    ],
}


def build_bot_dispatcher(
    services: Services, generations: GenerationDispatcher, bots: dict[str, Bot]
) -> Dispatcher:
    dispatcher = Dispatcher(services=services, generations=generations)
    middleware = UserMiddleware(services, {bot.id: name for name, bot in bots.items()})
    dispatcher.message.outer_middleware(middleware)
    dispatcher.callback_query.outer_middleware(middleware)
    dispatcher.message.outer_middleware(speech.EndRecordingWaitOnCommand())
    dispatcher.include_routers(
        start.build_router(),
        cancel.build_router(),
        image.build_router(),
        video.build_router(),
        speech.build_router(),
        lora.build_router(),
        build_admin_router(services.settings.admin_ids),
        unknown.build_router(),
    )
    return dispatcher


async def publish_menus(bots: dict[str, Bot]) -> None:
    for bot in bots.values():
        for language, items in MENU.items():
            commands = [BotCommand(command=name, description=description) for name, description in items]
            await bot.set_my_commands(commands, language_code=None if language == "en" else language)
