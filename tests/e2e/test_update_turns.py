"""Updates take turns in the running app (bot/telegram/turns.py): updates whose handlers hang on
Telegram hold every turn, yet a later update is still handled while they hang, and each of them is
handled once Telegram answers."""

from __future__ import annotations

from typing import Any

from bot.telegram.turns import HANDLED_AT_ONCE, TurnTakingDispatcher
from tests.conftest import AppFactory, wait_until
from tests.e2e.helpers import Chat
from tests.fakes.telegram import FakeTelegram


async def test_updates_hanging_on_telegram_hold_their_turns_only_so_long(
    make_app: AppFactory, telegram: FakeTelegram
) -> None:
    app = await make_app()
    assert app.bot_dispatcher is not None
    assert isinstance(app.bot_dispatcher, TurnTakingDispatcher)

    slow = [Chat(telegram, user_id=8300 + number) for number in range(HANDLED_AT_ONCE)]
    slow_chats = {chat.user_id for chat in slow}
    hanging: set[int] = set()

    def hangs(parameters: dict[str, Any]) -> bool:
        chat = int(parameters["chat_id"])
        if chat in slow_chats:
            hanging.add(chat)
            return True
        return False

    held = telegram.hold("sendMessage", only=hangs)
    for chat in slow:
        chat.send("/start")

    async def all_hang() -> bool:
        return len(hanging) == HANDLED_AT_ONCE

    await wait_until(all_hang)  # every turn is held by an update waiting on Telegram

    newcomer = Chat(telegram, user_id=8400)
    newcomer.send("/start")
    await newcomer.reply("Hi,")  # its turn came although none was given back
    assert not held.release.is_set()

    held.release.set()
    for chat in slow:
        await chat.reply("Hi,")
