"""Helpers for end-to-end tests: talk to the app as a Telegram user would, read what it answered."""

from __future__ import annotations

import inspect
from typing import Any

import pytest
from sqlalchemy import func, select

from app import App
from generation.store import Generation, GenerationStatus, LedgerEntry, Step, User
from tests.conftest import BOT_TOKEN
from tests.fakes.telegram import Call, FakeTelegram

USER = 1001


class Chat:
    """One user's private chat with one bot."""

    def __init__(
        self, telegram: FakeTelegram, *, user_id: int = USER, language: str = "en", token: str = BOT_TOKEN
    ):
        self.telegram = telegram
        self.user_id = user_id
        self.language = language
        self.token = token

    def send(self, text: str, **extra: Any) -> dict[str, Any]:
        return self.telegram.user_message(
            self.token, user_id=self.user_id, text=text, language_code=self.language, **extra
        )

    async def reply(self, containing: str, *, method: str = "sendMessage", timeout: float = 15.0) -> Call:
        """The first bot message to this chat whose text contains `containing`."""
        return await self.telegram.wait_for(
            lambda call: (
                call.token == self.token
                and call.method == method
                and call.ok
                and _as_int(call.chat_id) == self.user_id
                and containing in (call.text or "")
            ),
            timeout=timeout,
        )

    async def ask(self, text: str, containing: str) -> Call:
        self.send(text)
        return await self.reply(containing)

    def texts(self) -> list[str]:
        return [
            call.text or ""
            for call in self.telegram.sent(self.token, chat_id=self.user_id, methods=["sendMessage"])
        ]

    def albums(self) -> list[Call]:
        return self.telegram.sent(self.token, chat_id=self.user_id, methods=["sendMediaGroup", "sendPhoto"])


def _as_int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


async def generations_of(app: App) -> list[Generation]:
    assert app.services is not None
    async with app.services.db.sessions() as session:
        return list(await session.scalars(select(Generation).order_by(Generation.created_at)))


async def balance_and_ledger_sum(
    app: App, telegram_id: int = USER, bot_name: str = "image_bot"
) -> tuple[int, int]:
    """The cached balance and the ledger's sum: they must always agree."""
    assert app.services is not None
    async with app.services.db.sessions() as session:
        user = await session.scalar(
            select(User).where(User.telegram_id == telegram_id, User.bot_name == bot_name)
        )
        assert user is not None
        total = await session.scalar(
            select(func.sum(LedgerEntry.amount)).where(LedgerEntry.user_id == user.id)
        )
        return user.balance, int(total or 0)


def album_images(call: Call) -> list[bytes]:
    """The image bytes of a sendMediaGroup or sendPhoto call, in order."""
    if call.method == "sendPhoto":
        image = call.upload("photo")
        assert image is not None
        return [image]
    images = []
    for item in call.params["media"]:
        image = call.media(item["media"])  # uploaded, or sent as a URL that Telegram fetched
        assert image is not None
        images.append(image)
    return images


async def all_settled(app: App, count: int | None = None, timeout: float = 15.0) -> list[Generation]:
    """Wait until every generation (and at least `count`) is in a final status; answers them.

    The final status is written last, after the user's message, so tests that saw the message wait
    here for the row (a database state has no event to await)."""
    from tests.conftest import wait_until

    async def settled() -> bool:
        generations = await generations_of(app)
        enough = count is None or len(generations) >= count
        return enough and all(GenerationStatus(g.status).is_final for g in generations)

    await wait_until(settled, timeout)
    return await generations_of(app)


async def journal_of(app: App, generation_id: str) -> dict[str, Any]:
    """A generation's journal as the database holds it: each step's name and result."""
    assert app.services is not None
    async with app.services.db.sessions() as session:
        rows = await session.execute(
            select(Step.name, Step.result).where(Step.generation_id == generation_id)
        )
        return {name: result for name, result in rows}


def generation_ids_passed_to(monkeypatch: pytest.MonkeyPatch, target: Any, name: str) -> list[str]:
    """Patches `target.name` (a function, or a class's method, whose second argument is a generation
    id: `lifecycle.claim(db, id, ...)`, `ConcurrencyLimiter.acquire(self, id, ...)`) to note the id of
    each call, and answers the list it fills; the call itself goes on as before."""
    seen: list[str] = []
    original = getattr(target, name)
    if inspect.iscoroutinefunction(original):

        async def noted_async(first: Any, generation_id: str, *args: Any, **kwargs: Any) -> Any:
            seen.append(generation_id)
            return await original(first, generation_id, *args, **kwargs)

        monkeypatch.setattr(target, name, noted_async)
    else:

        def noted(first: Any, generation_id: str, *args: Any, **kwargs: Any) -> Any:
            seen.append(generation_id)
            return original(first, generation_id, *args, **kwargs)

        monkeypatch.setattr(target, name, noted)
    return seen
