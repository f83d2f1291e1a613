"""A process closes everything it opened: on stop, and when its start fails halfway."""

from __future__ import annotations

import asyncio
import socket

import pytest
from aiogram import Bot
from aiogram.client.session.aiohttp import AiohttpSession

from app import App
from tests.conftest import make_settings
from tests.e2e.helpers import Chat
from tests.fakes.elevenlabs import FakeElevenLabs
from tests.fakes.replicate import FakeReplicate
from tests.fakes.telegram import FakeTelegram

BACKGROUND = {"embedded-worker", "polling", "plan-b-reconciler", "payment-reconciler"}


def background_tasks() -> set[str]:
    return {task.get_name() for task in asyncio.all_tasks() if not task.done()} & BACKGROUND


def session_closed(bot: Bot) -> bool:
    session = bot.session
    assert isinstance(session, AiohttpSession)
    return session._session is None or session._session.closed


async def test_stop_closes_what_start_opened_and_a_second_stop_does_nothing(
    telegram: FakeTelegram,
    replicate: FakeReplicate,
    elevenlabs: FakeElevenLabs,
    sqlite_url: str,
    redis_url: str,
) -> None:
    settings = make_settings(sqlite_url, telegram, replicate, elevenlabs, redis_url=redis_url)
    app = App(settings)
    await app.start()
    assert background_tasks() == BACKGROUND
    await Chat(telegram).ask("/start", "Your balance: 10 ⭐")  # the bots' sessions are in use
    await app.stop()
    assert background_tasks() == set()
    assert app.bots and all(session_closed(bot) for bot in app.bots.values())
    await app.stop()


async def test_a_start_that_fails_halfway_closes_what_it_had_opened(
    telegram: FakeTelegram,
    replicate: FakeReplicate,
    elevenlabs: FakeElevenLabs,
    sqlite_url: str,
    redis_url: str,
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = make_settings(
            sqlite_url, telegram, replicate, elevenlabs, redis_url=redis_url, http_port=port
        )
        app = App(settings)
        with pytest.raises(OSError):
            await app.start()  # the HTTP port is taken: after the worker and the bots were started
    assert app.bots and all(session_closed(bot) for bot in app.bots.values())
    assert background_tasks() == set()
