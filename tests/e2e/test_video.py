"""/video (text_to_video) and /animate (image_to_video) end to end: Telegram and HTTP, both plans, both
databases, the real aiogram and replicate SDKs against the fakes."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from sqlalchemy import select

from app import App
from generation.store import LedgerEntry
from tests.conftest import AppFactory
from tests.constants import API_TOKEN, BOT_TOKEN
from tests.e2e.helpers import USER, Chat, all_settled, balance_and_ledger_sum, generations_of
from tests.fakes.replicate import FakeReplicate, Outcome
from tests.fakes.telegram import Call, FakeTelegram

KLING = "kwaivgi/kling-v1.6-standard"
MINIMAX = "minimax/video-01"
BONUS = 100  # videos cost 30-45 stars: more than the default 10-star bonus
PHOTO = b"\xff\xd8\xff\xe0" + b"a photo of a cat on a windowsill " * 40
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
SEED = {"telegram_id": USER, "username": "fox", "is_ru": False, "bot_name": "image_bot"}


def script_video(replicate: FakeReplicate, model: str, output: Any = None) -> str:
    """The next prediction of `model` succeeds with a video URL served by the fake; answers the URL."""
    url = replicate.output_url(0, ext="mp4")
    replicate.script(model, Outcome(output=url if output is None else output))
    return url


def videos(telegram: FakeTelegram) -> list[Call]:
    return telegram.sent(BOT_TOKEN, chat_id=USER, methods=["sendVideo"])


def assert_no_telegram_url_left_the_server(replicate: FakeReplicate, telegram: FakeTelegram) -> None:
    """Telegram file URLs carry the bot token: nothing sent to Replicate may contain either."""
    sent = json.dumps(replicate.creates)
    assert BOT_TOKEN not in sent
    assert telegram.url not in sent
    assert "/file/bot" not in sent


def photo_caption(telegram: FakeTelegram, caption: str, *, language: str = "en", **media: Any) -> None:
    telegram.user_message(BOT_TOKEN, user_id=USER, language_code=language, caption=caption, **media)


# --- /video ----------------------------------------------------------------------------------------


async def test_video_on_plan_b_sends_the_video_replicate_made(
    make_app: AppFactory, telegram: FakeTelegram, replicate: FakeReplicate, database_url: str
) -> None:
    app = await make_app(database_url=database_url, new_user_bonus=BONUS)
    url = script_video(replicate, KLING)  # a single URL, as video models answer
    chat = Chat(telegram)
    chat.send("/video a paper boat sailing down a rainy street")
    await chat.reply("Charged 30 ⭐. Balance: 70 ⭐")
    [sent] = videos(telegram)
    assert sent.upload("video") == replicate.png_bytes(0)  # the bytes the fake served for the URL
    [create] = replicate.creates
    assert create["model"] == KLING
    assert create["input"] == {
        "prompt": "a paper boat sailing down a rainy street",
        "duration": 5,
        "aspect_ratio": "16:9",
        "negative_prompt": "",
    }
    assert any(
        call.method == "sendChatAction" and call.params["action"] == "upload_video" for call in telegram.calls
    )
    [generation] = await all_settled(app)
    assert (generation.plan, generation.status, generation.kind) == ("B", "done", "text_to_video")
    assert (generation.price, generation.refunded) == (30, 0)
    assert generation.result is not None and generation.result["urls"] == [url]
    assert await balance_and_ledger_sum(app) == (70, 70)


async def test_video_on_plan_a_through_the_worker(
    make_app: AppFactory, telegram: FakeTelegram, replicate: FakeReplicate, database_url: str, redis_url: str
) -> None:
    app = await make_app(database_url=database_url, redis_url=redis_url, new_user_bonus=BONUS)
    url = replicate.output_url(0, ext="mp4")
    replicate.script(KLING, Outcome(output=[url], polls=2))  # some models answer a list: the first is it
    chat = Chat(telegram)
    chat.send("/video a lighthouse in a storm")
    await chat.reply("Charged 30 ⭐. Balance: 70 ⭐")
    [sent] = videos(telegram)
    assert sent.upload("video") == replicate.png_bytes(0)
    [generation] = await all_settled(app)
    assert (generation.plan, generation.status, generation.attempts) == ("A", "done", 1)
    assert replicate.create_count(KLING) == 1
    assert await balance_and_ledger_sum(app) == (70, 70)


async def test_a_failed_video_is_refunded_once_in_the_users_language(
    make_app: AppFactory, telegram: FakeTelegram, replicate: FakeReplicate
) -> None:
    app = await make_app(new_user_bonus=BONUS)
    replicate.script(KLING, Outcome(status="failed", error="GPU fell over"))
    chat = Chat(telegram, language="ru")
    chat.send("/video кот играет на пианино")
    await chat.reply("Генерация не удалась. Возвращено 30 ⭐. Баланс: 100 ⭐")
    [generation] = await all_settled(app)
    assert (generation.status, generation.refunded) == ("failed", 30)
    assert videos(telegram) == []
    assert await balance_and_ledger_sum(app) == (100, 100)
    assert app.services is not None
    async with app.services.db.sessions() as session:
        postings = list(
            await session.scalars(
                select(LedgerEntry.operation_key).where(LedgerEntry.generation_id == generation.id)
            )
        )
    assert sorted(postings) == [f"charge:{generation.id}", f"refund:{generation.id}"]


async def test_a_video_over_the_upload_limit_goes_as_a_link(
    make_app: AppFactory, telegram: FakeTelegram, replicate: FakeReplicate, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The limit the delivery step reads, made tiny so the fake's small body is "over 50 MB".
    monkeypatch.setattr("generation.pipelines.UPLOAD_LIMIT", 16)
    app = await make_app(new_user_bonus=BONUS)
    url = script_video(replicate, KLING)
    chat = Chat(telegram)
    chat.send("/video a very long film")
    link = await chat.reply("too large to send here")
    assert url in (link.text or "")
    await chat.reply("Charged 30 ⭐. Balance: 70 ⭐")  # the user got the video, by link: it is paid
    assert videos(telegram) == []
    [generation] = await all_settled(app)
    assert generation.status == "done"


# --- /animate --------------------------------------------------------------------------------------


async def test_animate_a_photo_from_its_caption(
    make_app: AppFactory, telegram: FakeTelegram, replicate: FakeReplicate
) -> None:
    app = await make_app(new_user_bonus=BONUS)
    script_video(replicate, KLING)
    largest = telegram.add_file(BOT_TOKEN, PHOTO)  # the fake also sends smaller sizes of it
    photo_caption(telegram, "/animate the cat yawns and stretches", photo_file_id=largest)
    chat = Chat(telegram)
    await chat.reply("Charged 35 ⭐. Balance: 65 ⭐")
    [file_id] = replicate.files
    assert replicate.files[file_id] == PHOTO  # fetched through the bot, uploaded to Replicate's files API
    [create] = replicate.creates
    assert create["model"] == KLING
    assert create["input"]["start_image"] == f"{replicate.url}/v1/files/{file_id}"
    assert create["input"]["prompt"] == "the cat yawns and stretches"
    assert_no_telegram_url_left_the_server(replicate, telegram)
    [get_file] = [call for call in telegram.calls if call.method == "getFile"]
    assert get_file.params["file_id"] == largest
    assert videos(telegram)[0].upload("video") == replicate.png_bytes(0)
    [generation] = await all_settled(app)
    assert (generation.kind, generation.status, generation.model) == ("image_to_video", "done", "kling-i2v")
    assert await balance_and_ledger_sum(app) == (65, 65)


async def test_animate_as_a_reply_to_a_photo_on_plan_a(
    make_app: AppFactory, telegram: FakeTelegram, replicate: FakeReplicate, redis_url: str
) -> None:
    app = await make_app(redis_url=redis_url, new_user_bonus=BONUS)
    script_video(replicate, KLING)
    photo = telegram.add_file(BOT_TOKEN, PHOTO)
    sent_photo = telegram.user_message(BOT_TOKEN, user_id=USER, photo_file_id=photo)["message"]
    chat = Chat(telegram)
    chat.send("/animate waves roll in", reply_to_message=sent_photo)
    await chat.reply("Charged 35 ⭐. Balance: 65 ⭐")
    assert list(replicate.files.values()) == [PHOTO]
    [file_id] = replicate.files
    [create] = replicate.creates
    assert create["input"]["start_image"] == f"{replicate.url}/v1/files/{file_id}"
    assert_no_telegram_url_left_the_server(replicate, telegram)
    assert videos(telegram)[0].upload("video") == replicate.png_bytes(0)
    [generation] = await all_settled(app)
    assert (generation.plan, generation.status) == ("A", "done")


async def test_animate_an_image_sent_as_a_file(
    make_app: AppFactory, telegram: FakeTelegram, replicate: FakeReplicate
) -> None:
    app = await make_app(new_user_bonus=BONUS)
    script_video(replicate, KLING)
    file_id = telegram.add_file(BOT_TOKEN, PHOTO, "documents/cat.png")
    photo_caption(
        telegram,
        "/animate the cat blinks",
        document={"file_id": file_id, "file_name": "cat.png", "mime_type": "image/png"},
    )
    await Chat(telegram).reply("Charged 35 ⭐")
    assert list(replicate.files.values()) == [PHOTO]
    assert_no_telegram_url_left_the_server(replicate, telegram)
    [generation] = await all_settled(app)
    assert generation.status == "done"


async def test_bad_animate_and_video_requests_cost_nothing_and_call_no_provider(
    make_app: AppFactory, telegram: FakeTelegram, replicate: FakeReplicate
) -> None:
    app = await make_app(new_user_bonus=BONUS)
    chat = Chat(telegram)

    async def answered(send: Callable[[], object], containing: str, who: Chat = chat) -> None:
        """Send, then wait for the bot's answer to this message (earlier answers may say the same)."""
        earlier = len(telegram.calls)
        send()
        await telegram.wait_for(
            lambda call: (
                any(later is call for later in telegram.calls[earlier:])
                and call.method == "sendMessage"
                and str(call.chat_id) == str(who.user_id)
                and containing in (call.text or "")
            )
        )

    await answered(lambda: chat.send("/video"), "Write what the video should show")
    await answered(lambda: chat.send("/video    "), "Write what the video should show")
    await answered(lambda: chat.send("/animate a smile"), "I need a photo to animate")
    await answered(lambda: chat.send("/animate"), "Send a photo with the caption /animate")
    words = chat.send("just words")["message"]
    await answered(lambda: chat.send("/animate come alive", reply_to_message=words), "I need a photo")
    photo = telegram.add_file(BOT_TOKEN, PHOTO)
    await answered(lambda: photo_caption(telegram, "/animate", photo_file_id=photo), "Send a photo with")
    pdf = {"file_name": "report.pdf", "mime_type": "application/pdf"}
    await answered(
        lambda: photo_caption(telegram, "/animate the pages turn", document=pdf),
        "This file is not an image (application/pdf)",
    )
    huge = {"file_name": "huge.png", "mime_type": "image/png", "file_size": 25 * 1024 * 1024}
    await answered(
        lambda: photo_caption(telegram, "/animate huge", document=huge),
        "This image is too large (25.0 MB; at most 20 MB)",
    )
    ru = Chat(telegram, user_id=3003, language="ru")
    await answered(lambda: ru.send("/animate улыбка"), "Нужно фото для анимации", ru)
    await answered(lambda: ru.send("/video"), "Напишите после команды, что должно быть в видео", ru)
    assert replicate.creates == [] and replicate.files == {}
    assert not any(call.method == "getFile" for call in telegram.calls)
    assert await generations_of(app) == []
    assert await balance_and_ledger_sum(app) == (BONUS, BONUS)


# --- HTTP ------------------------------------------------------------------------------------------


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


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


async def test_http_text_to_video_and_image_to_video(
    make_app: AppFactory, http: aiohttp.ClientSession, replicate: FakeReplicate
) -> None:
    app = await make_app(new_user_bonus=BONUS)
    url = script_video(replicate, MINIMAX)
    status, body = await post(http, app, "text-to-video", {**SEED, "prompt": "a fox", "model": "minimax-t2v"})
    assert status == 202 and body["plan"] == "B"
    await all_settled(app, 1)
    result = await read(http, app, body["id"])
    assert (result["status"], result["price"], result["urls"]) == ("done", 40, [url])
    assert replicate.creates[0]["input"] == {"prompt": "a fox", "prompt_optimizer": True}

    image_url = "https://images.example.com/cat.jpg"
    script_video(replicate, MINIMAX)
    status, body = await post(
        http,
        app,
        "image-to-video",
        {**SEED, "prompt": "the cat waves", "model": "minimax-i2v", "image_url": image_url},
    )
    assert status == 202
    await all_settled(app, 2)
    result = await read(http, app, body["id"])
    assert (result["status"], result["price"], result["urls"]) == ("done", 45, [url])
    # An HTTP client's image URL is passed through as the model's own input name: nothing to upload.
    assert replicate.creates[1]["input"] == {
        "prompt": "the cat waves",
        "first_frame_image": image_url,
        "prompt_optimizer": True,
    }
    assert replicate.files == {}
    assert await balance_and_ledger_sum(app) == (BONUS - 85, BONUS - 85)

    status, problems = await post(http, app, "image-to-video", {**SEED, "prompt": "no image"})
    assert status == 422 and "image_url or image_file_id" in json.dumps(problems)
    assert len(replicate.creates) == 2
