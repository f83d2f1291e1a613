"""/speech (text_to_speech) and /voice (voice_avatar) end to end: Telegram and HTTP, both plans, both
databases, the real aiogram and elevenlabs SDKs against the fakes."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from sqlalchemy import select

from app import App
from generation.store import Generation, LedgerEntry, Step, User
from generation.users import ensure_user
from tests.conftest import AppFactory, closed_port
from tests.constants import API_TOKEN, BOT_TOKEN
from tests.e2e.helpers import USER, Chat, all_settled, balance_and_ledger_sum, generations_of
from tests.fakes.elevenlabs import ADAM_VOICE_ID, RACHEL_VOICE_ID, ApiError, FakeElevenLabs
from tests.fakes.telegram import Call, FakeTelegram

MODEL = "eleven_multilingual_v2"
OPUS = "opus_48000_64"  # the catalogue's output format: Ogg/Opus, a Telegram voice message
BONUS = 200  # a clone costs 50 stars, speech 5: more than the default 10-star bonus
RU_USER = 2002
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
SEED = {"telegram_id": USER, "username": "fox", "is_ru": False, "bot_name": "image_bot"}


def recording(number: int = 1) -> bytes:
    """A playable Ogg stream (the fake refuses to clone bytes that are not audio), distinct per number."""
    return FakeElevenLabs().audio_bytes(OPUS) + bytes([number]) * 16


def voice_message(
    telegram: FakeTelegram, content: bytes, *, duration: int = 12, **extra: Any
) -> dict[str, Any]:
    """A voice message from the user whose bytes the bot can fetch; answers the update."""
    file_id = telegram.add_file(BOT_TOKEN, content, "voice/file_1.oga")
    return telegram.user_message(
        BOT_TOKEN,
        user_id=USER,
        voice={"file_id": file_id, "duration": duration, "file_size": len(content)},
        **extra,
    )


def voices_sent(telegram: FakeTelegram, user_id: int = USER) -> list[Call]:
    return telegram.sent(BOT_TOKEN, chat_id=user_id, methods=["sendVoice"])


async def another_reply(chat: Chat, containing: str, *, besides: Call) -> Call:
    """A bot message like one already seen (Chat.reply answers the first that matches)."""
    return await chat.telegram.wait_for(
        lambda call: (
            call is not besides
            and call.token == chat.token
            and call.method == "sendMessage"
            and call.params.get("chat_id") == chat.user_id
            and containing in (call.text or "")
        )
    )


async def stored_voice(app: App, telegram_id: int = USER) -> str | None:
    assert app.services is not None
    async with app.services.db.sessions() as session:
        user = await session.scalar(
            select(User).where(User.telegram_id == telegram_id, User.bot_name == "image_bot")
        )
    assert user is not None
    return user.voice_id


async def refunds_of(app: App, generation: Generation) -> list[int]:
    assert app.services is not None
    async with app.services.db.sessions() as session:
        rows = await session.scalars(
            select(LedgerEntry.amount).where(LedgerEntry.operation_key == f"refund:{generation.id}")
        )
        return list(rows)


# --- /speech ---------------------------------------------------------------------------------------


async def test_speech_is_a_voice_message_in_the_default_voice_of_the_users_language(
    make_app: AppFactory, telegram: FakeTelegram, elevenlabs: FakeElevenLabs
) -> None:
    app = await make_app(new_user_bonus=BONUS)
    english = Chat(telegram)
    english.send("/speech Hello there, fox!")
    await english.reply("Charged 5 ⭐. Balance: 195 ⭐")
    russian = Chat(telegram, user_id=RU_USER, language="ru")
    russian.send("/speech Привет, лиса!")
    await russian.reply("Списано 5 ⭐. Баланс: 195 ⭐")

    [sent] = voices_sent(telegram)
    assert sent.upload("voice") == elevenlabs.audio_bytes(OPUS)
    assert len(voices_sent(telegram, RU_USER)) == 1
    spoken = {(r["text"], r["voice_id"], r["model_id"], r["output_format"]) for r in elevenlabs.tts_requests}
    assert spoken == {
        ("Hello there, fox!", RACHEL_VOICE_ID, MODEL, OPUS),
        ("Привет, лиса!", ADAM_VOICE_ID, MODEL, OPUS),
    }
    generations = await all_settled(app, 2)
    assert {(g.kind, g.status, g.price, g.refunded) for g in generations} == {
        ("text_to_speech", "done", 5, 0)
    }
    # The stored request says which voice spoke, and why.
    assert {(g.request["voice_id"], g.request["voice_source"]) for g in generations} == {
        (RACHEL_VOICE_ID, "default"),
        (ADAM_VOICE_ID, "default"),
    }
    assert all(g.result is not None and "audio" not in g.result for g in generations)
    assert await balance_and_ledger_sum(app) == (195, 195)


async def test_speech_on_plan_a_retries_a_rate_limit_then_delivers_once(
    make_app: AppFactory,
    telegram: FakeTelegram,
    elevenlabs: FakeElevenLabs,
    database_url: str,
    redis_url: str,
) -> None:
    app = await make_app(
        database_url=database_url, redis_url=redis_url, new_user_bonus=BONUS, retry_backoff_base=0.05
    )
    elevenlabs.fail_next("tts", ApiError.too_many_concurrent_requests())
    chat = Chat(telegram)
    chat.send("/speech Patience is a virtue.")
    await chat.reply("Charged 5 ⭐. Balance: 195 ⭐")
    [generation] = await all_settled(app)
    assert (generation.plan, generation.status, generation.attempts, generation.refunded) == (
        "A",
        "done",
        2,
        0,
    )
    assert [r["status"] for r in elevenlabs.tts_requests] == [429, 200]
    [sent] = voices_sent(telegram)
    assert sent.upload("voice") == elevenlabs.audio_bytes(OPUS)
    assert await refunds_of(app, generation) == []
    assert await balance_and_ledger_sum(app) == (195, 195)


async def test_speech_in_a_format_other_than_opus_is_sent_as_an_audio_file(
    make_app: AppFactory, telegram: FakeTelegram, elevenlabs: FakeElevenLabs, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = await make_app(new_user_bonus=BONUS)
    assert app.services is not None
    model = app.services.catalog.get("eleven-multilingual")
    assert model is not None
    monkeypatch.setitem(model.extra, "output_format", "mp3_44100_128")  # as an operator may configure it
    chat = Chat(telegram)
    chat.send("/speech An MP3, please.")
    await chat.reply("Charged 5 ⭐")
    [sent] = telegram.sent(BOT_TOKEN, chat_id=USER, methods=["sendAudio", "sendVoice"])
    assert sent.method == "sendAudio"
    assert sent.upload("audio") == elevenlabs.audio_bytes("mp3_44100_128")
    assert [r["output_format"] for r in elevenlabs.tts_requests] == ["mp3_44100_128"]


# --- /voice ----------------------------------------------------------------------------------------


async def test_voice_as_a_reply_clones_it_and_the_next_speech_uses_it(
    make_app: AppFactory, telegram: FakeTelegram, elevenlabs: FakeElevenLabs
) -> None:
    app = await make_app(new_user_bonus=BONUS)
    chat = Chat(telegram)
    voice = voice_message(telegram, recording(1))
    chat.send("/voice", reply_to_message=voice["message"])
    ready = await chat.reply("Your voice is ready! /speech now speaks in it.")
    await chat.reply("Charged 50 ⭐. Balance: 150 ⭐")

    [clone] = elevenlabs.clone_requests
    assert clone["files"] == [("recording.ogg", "audio/ogg", recording(1))]
    cloned = clone["voice_id"]
    assert cloned and await stored_voice(app) == cloned

    chat.send("/speech Now in my own voice.")
    await chat.reply("Charged 5 ⭐. Balance: 145 ⭐")
    [speech] = elevenlabs.tts_requests
    assert (speech["voice_id"], speech["text"]) == (cloned, "Now in my own voice.")
    generations = await all_settled(app, 2)
    assert [(g.kind, g.status) for g in generations] == [("voice_avatar", "done"), ("text_to_speech", "done")]
    assert generations[0].result == {"voice_id": cloned, "message_ids": [ready.result["message_id"]]}
    assert generations[1].request["voice_source"] == "cloned"
    assert elevenlabs.deleted_voices == []  # there was no earlier voice to replace
    assert await balance_and_ledger_sum(app) == (145, 145)


async def test_voice_asks_then_takes_the_next_recording_and_replaces_the_old_voice(
    make_app: AppFactory, telegram: FakeTelegram, elevenlabs: FakeElevenLabs, database_url: str
) -> None:
    app = await make_app(database_url=database_url, new_user_bonus=BONUS)
    chat = Chat(telegram)
    # A voice message captioned /voice clones it at once.
    voice_message(telegram, recording(1), caption="/voice")
    await chat.reply("Charged 50 ⭐. Balance: 150 ⭐")
    first = await stored_voice(app)
    assert first is not None

    # /voice alone asks; the next voice message of this user in this chat is taken.
    await chat.ask("/voice", "Send me a voice message")
    voice_message(telegram, recording(2))
    await chat.reply("Charged 50 ⭐. Balance: 100 ⭐")
    assert [clone["files"][0][2] for clone in elevenlabs.clone_requests] == [recording(1), recording(2)]
    second = await stored_voice(app)
    assert second is not None and second != first
    # The replaced voice is deleted at ElevenLabs: voice slots are few.
    assert elevenlabs.deleted_voices == [first]
    assert elevenlabs.cloned_voice_ids == [second]
    generations = await all_settled(app, 2)
    assert [g.result["voice_id"] for g in generations if g.result] == [first, second]
    assert await balance_and_ledger_sum(app) == (100, 100)


async def test_bad_inputs_get_a_clear_message_charge_nothing_and_call_no_provider(
    make_app: AppFactory, telegram: FakeTelegram, elevenlabs: FakeElevenLabs
) -> None:
    app = await make_app(new_user_bonus=BONUS)
    chat = Chat(telegram)
    await chat.ask("/speech", "Write the text after the command")
    await chat.ask("/speech " + "x" * 2600, "at most 2500 characters, yours has 2600")
    russian = Chat(telegram, user_id=RU_USER, language="ru")
    await russian.ask("/speech " + "я" * 2501, "не более 2500 символов, у вас 2501")

    # /voice replying to something that is not a recording.
    text_message = chat.send("just words")
    chat.send("/voice", reply_to_message=text_message["message"])
    not_a_recording = await chat.reply("That is not a voice message")
    # A recording too short, or too large, is refused before anything is charged.
    voice_message(telegram, recording(1), duration=2, caption="/voice")
    await chat.reply("The recording is too short (2 s)")
    file_id = telegram.add_file(BOT_TOKEN, recording(2), "voice/file_2.oga")
    telegram.user_message(
        BOT_TOKEN,
        user_id=USER,
        caption="/voice",
        voice={"file_id": file_id, "duration": 30, "file_size": 11 << 20},
    )
    await chat.reply("The file is too large: at most 10 MB")

    # After /voice, a photo is not a recording: the bot says so and keeps waiting...
    await chat.ask("/voice", "Send me a voice message")
    photo = telegram.add_file(BOT_TOKEN, b"\xff\xd8\xff\xe0 a photo", "photos/file_1.jpg")
    telegram.user_message(BOT_TOKEN, user_id=USER, photo_file_id=photo)
    await another_reply(chat, "That is not a voice message", besides=not_a_recording)
    # ...until another command ends the wait: a voice message after it is not cloned.
    balance = await chat.ask("/balance", "Your balance: 200 ⭐")
    voice_message(telegram, recording(3))
    chat.send("/balance")
    await another_reply(chat, "Your balance: 200 ⭐", besides=balance)

    assert elevenlabs.tts_requests == []
    assert elevenlabs.clone_requests == []
    assert await generations_of(app) == []
    assert await balance_and_ledger_sum(app) == (200, 200)


async def test_a_clone_whose_answer_was_lost_in_a_crash_is_found_not_paid_for_twice(
    make_app: AppFactory, telegram: FakeTelegram, elevenlabs: FakeElevenLabs
) -> None:
    app = await make_app(new_user_bonus=BONUS)
    assert app.services is not None and app.inline is not None
    services = app.services
    # A run that journaled its intent to clone, reached ElevenLabs, and died before the voice id came back.
    async with services.db.transaction() as session:
        user, _ = await ensure_user(session, "image_bot", USER, username=None, language="en")
        generation = Generation(
            request_key="test:lost-clone",
            kind="voice_avatar",
            user_id=user.id,
            bot_name="image_bot",
            chat_id=USER,
            model="eleven-voice-clone",
            # Nothing listens there: the rerun must not need the recording again.
            request={"telegram_id": USER, "audio_url": f"http://127.0.0.1:{closed_port()}/gone.ogg"},
            plan="B",
            # As the dead run left it: claimed once, its lease run out.
            status="running",
            attempts=1,
            lease_owner="inline-dead",
            lease_expires_at=time.time() - 1,
            units=1,
            unit_price=50,
            price=50,
        )
        session.add(generation)
        await session.flush()
        session.add(Step(generation_id=generation.id, name="clone:intent", result=time.time()))
    lost = await services.elevenlabs.clone_voice(f"aibot-{generation.id}", recording(1), "r.ogg", "audio/ogg")

    await app.inline.run(generation.id)  # what Plan B does for an interrupted generation at start
    ready = await Chat(telegram).reply("Your voice is ready!")
    [finished] = await all_settled(app, 1)
    assert finished.status == "done"
    assert finished.result == {"voice_id": lost, "message_ids": [ready.result["message_id"]]}
    assert len(elevenlabs.clone_requests) == 1  # the lost one only: no second clone
    assert await stored_voice(app) == lost


# --- ElevenLabs errors -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "message"),
    [
        (ApiError.quota_exceeded(), "Сервис ИИ сейчас занят или недоступен"),
        (ApiError.too_many_concurrent_requests(retry_after=1), "Сервис ИИ сейчас занят или недоступен"),
    ],
    ids=["quota_exceeded", "rate_limited"],
)
async def test_a_failed_speech_on_plan_b_is_refunded_once_in_the_users_language(
    make_app: AppFactory, telegram: FakeTelegram, elevenlabs: FakeElevenLabs, error: ApiError, message: str
) -> None:
    app = await make_app(new_user_bonus=BONUS)
    elevenlabs.fail_next("tts", error)
    chat = Chat(telegram, language="ru")
    chat.send("/speech Тишина.")
    await chat.reply(f"{message}, попробуйте позже. Возвращено 5 ⭐. Баланс: 200 ⭐")
    [generation] = await all_settled(app)
    assert (generation.plan, generation.status, generation.attempts) == ("B", "failed", 1)
    assert len(elevenlabs.tts_requests) == 1  # Plan B: one attempt
    assert await refunds_of(app, generation) == [5]
    assert voices_sent(telegram) == []
    assert await balance_and_ledger_sum(app) == (200, 200)


async def test_a_full_voice_library_fails_the_clone_and_refunds_once_keeping_the_old_voice(
    make_app: AppFactory, telegram: FakeTelegram, elevenlabs: FakeElevenLabs
) -> None:
    app = await make_app(new_user_bonus=BONUS)
    chat = Chat(telegram)
    voice_message(telegram, recording(1), caption="/voice")
    await chat.reply("Charged 50 ⭐. Balance: 150 ⭐")
    first = await stored_voice(app)

    elevenlabs.fail_next("clone", ApiError.voice_limit_reached())
    voice_message(telegram, recording(2), caption="/voice")
    await chat.reply(
        "no room for new voices right now; please try again later. 50 ⭐ returned. Balance: 150 ⭐"
    )
    [_, failed] = await all_settled(app, 2)
    assert (failed.status, failed.refunded) == ("failed", 50)
    assert await refunds_of(app, failed) == [50]
    assert "voice_limit_reached" in (failed.error or "")
    assert await stored_voice(app) == first  # the user keeps the voice they had
    assert elevenlabs.deleted_voices == []
    assert await balance_and_ledger_sum(app) == (150, 150)


async def test_a_cloned_voice_deleted_at_elevenlabs_fails_once_then_speech_uses_the_default(
    make_app: AppFactory, telegram: FakeTelegram, elevenlabs: FakeElevenLabs
) -> None:
    app = await make_app(new_user_bonus=BONUS)
    chat = Chat(telegram)
    voice_message(telegram, recording(1), caption="/voice")
    await chat.reply("Charged 50 ⭐. Balance: 150 ⭐")
    cloned = await stored_voice(app)
    assert cloned is not None
    del elevenlabs.voices[cloned]  # an operator freed the slot at ElevenLabs

    chat.send("/speech Are you still there?")
    await chat.reply("Your cloned voice no longer exists at the voice service")
    assert await stored_voice(app) is None
    chat.send("/speech Hello again.")
    await chat.reply("Charged 5 ⭐. Balance: 145 ⭐")
    assert [(r["voice_id"], r["status"]) for r in elevenlabs.tts_requests] == [
        (cloned, 404),
        (RACHEL_VOICE_ID, 200),
    ]
    assert await balance_and_ledger_sum(app) == (145, 145)


# --- HTTP ------------------------------------------------------------------------------------------


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def audio_host() -> AsyncIterator[str]:
    """An HTTP server with the user's recording at /recording.mp3 (what an HTTP client's audio_url is)."""

    async def serve(_: web.Request) -> web.Response:
        return web.Response(body=FakeElevenLabs().audio_bytes("mp3_44100_128"), content_type="audio/mpeg")

    app = web.Application()
    app.router.add_get("/recording.mp3", serve)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    yield f"http://{host}:{port}"
    await runner.cleanup()


async def post(http: aiohttp.ClientSession, app: App, kind: str, body: dict[str, Any]) -> tuple[int, Any]:
    url = f"http://127.0.0.1:{app.http_port}/api/generation/{kind}"
    async with http.post(url, json=body, headers=AUTH) as response:
        return response.status, await response.json()


async def read(http: aiohttp.ClientSession, app: App, generation_id: str) -> dict[str, Any]:
    url = f"http://127.0.0.1:{app.http_port}/api/generations/{generation_id}"
    async with http.get(url, headers=AUTH) as response:
        assert response.status == 200
        body: dict[str, Any] = await response.json()
        return body


async def test_http_clones_a_voice_from_a_url_and_speaks_with_a_given_voice(
    make_app: AppFactory,
    http: aiohttp.ClientSession,
    telegram: FakeTelegram,
    elevenlabs: FakeElevenLabs,
    audio_host: str,
) -> None:
    app = await make_app(new_user_bonus=BONUS)
    status, body = await post(http, app, "voice-avatar", {**SEED, "audio_url": f"{audio_host}/recording.mp3"})
    assert status == 202
    chat = Chat(telegram)
    await chat.reply("Your voice is ready!")
    [clone] = elevenlabs.clone_requests
    assert clone["files"] == [("recording.mp3", "audio/mpeg", elevenlabs.audio_bytes("mp3_44100_128"))]
    await all_settled(app, 1)
    avatar = await read(http, app, body["id"])
    assert avatar["status"] == "done" and avatar["result"]["voice_id"] == clone["voice_id"]

    status, body = await post(
        http, app, "text-to-speech", {**SEED, "text": "Read by Adam.", "voice_id": ADAM_VOICE_ID}
    )
    assert status == 202
    await chat.reply("Charged 5 ⭐. Balance: 145 ⭐")
    assert [r["voice_id"] for r in elevenlabs.tts_requests] == [ADAM_VOICE_ID]  # the request's voice wins
    assert voices_sent(telegram)[0].upload("voice") == elevenlabs.audio_bytes(OPUS)
    await all_settled(app, 2)
    speech = await read(http, app, body["id"])
    assert speech["status"] == "done" and speech["result"]["voice_id"] == ADAM_VOICE_ID

    status, problems = await post(http, app, "text-to-speech", {**SEED, "text": ""})
    assert status == 422 and problems[0]["code"] == "text_empty"
    status, problems = await post(http, app, "voice-avatar", SEED)
    assert status == 422 and problems[0]["field"] == "body"
    assert len(elevenlabs.tts_requests) == 1 and len(elevenlabs.clone_requests) == 1


async def test_http_speech_without_a_bot_stores_no_audio(
    make_app: AppFactory, http: aiohttp.ClientSession, elevenlabs: FakeElevenLabs
) -> None:
    app = await make_app(bot_tokens={}, new_user_bonus=BONUS)
    status, body = await post(http, app, "text-to-speech", {"telegram_id": 5, "text": "Nobody listens."})
    assert status == 202
    [generation] = await all_settled(app, 1)
    assert generation.status == "done"
    assert generation.result == {
        "voice_id": RACHEL_VOICE_ID,
        "format": OPUS,
        "bytes": len(elevenlabs.audio_bytes(OPUS)),
    }
    assert [r["text"] for r in elevenlabs.tts_requests] == ["Nobody listens."]
    assert (await read(http, app, body["id"]))["result"]["voice_id"] == RACHEL_VOICE_ID


async def test_a_pending_voice_survives_a_restart_and_is_seen_by_another_process(
    make_app: AppFactory, telegram: FakeTelegram, elevenlabs: FakeElevenLabs, database_url: str
) -> None:
    """The wait for a recording lives in the database: a restart (or another `aibot run` on the same
    database, with Redis down) still takes the next voice message as the clone."""
    first = await make_app(database_url=database_url, new_user_bonus=BONUS)
    chat = Chat(telegram)
    await chat.ask("/voice", "Send me a voice message")
    await first.stop()

    second = await make_app(database_url=database_url)
    voice_message(telegram, recording(1))
    await chat.reply("Charged 50 ⭐. Balance: 150 ⭐")
    assert len(elevenlabs.clone_requests) == 1
    assert await stored_voice(second) is not None
    assert await balance_and_ledger_sum(second) == (150, 150)
