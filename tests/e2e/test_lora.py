"""The personal LoRA end to end: /train with a ZIP of photos (a Replicate training, finished by its
webhook or by polling, on both plans), then /photo with the trained version; the archive checked before
anything is charged; the HTTP routes model-training and neuro-photo."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from loguru import logger
from sqlalchemy import delete, select

from app import App
from generation.store import Database, LedgerEntry, Step, User
from tests.conftest import AppFactory, closed_port, wait_until
from tests.constants import API_TOKEN, BOT_TOKEN
from tests.e2e.helpers import (
    USER,
    Chat,
    album_images,
    all_settled,
    balance_and_ledger_sum,
    generations_of,
    journal_of,
)
from tests.fakes.replicate import TRAINER_MODEL, FakeReplicate, Outcome
from tests.fakes.telegram import FakeTelegram
from tests.zip_samples import JPEG, photos_zip

AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
SEED = {"telegram_id": USER, "username": "fox", "is_ru": False, "bot_name": "image_bot"}
MB = 1024 * 1024
TRAINING_PRICE = 200
BONUS = 300  # enough for a training and a few photos


def send_archive(
    telegram: FakeTelegram, chat: Chat, content: bytes, *, caption: str | None = None
) -> dict[str, Any]:
    """The user sends `content` as a document named photos.zip (Telegram keeps the bytes)."""
    file_id = telegram.add_file(chat.token, content, "documents/photos.zip")
    return telegram.user_message(
        chat.token,
        user_id=chat.user_id,
        language_code=chat.language,
        document={"file_id": file_id, "file_name": "photos.zip", "mime_type": "application/zip"},
        caption=caption,
    )


async def trained_model(app: App, telegram_id: int = USER) -> tuple[str | None, str | None]:
    assert app.services is not None
    async with app.services.db.sessions() as session:
        user = await session.scalar(
            select(User).where(User.telegram_id == telegram_id, User.bot_name == "image_bot")
        )
    assert user is not None
    return user.lora_version, user.lora_trigger_word


def assert_no_telegram_secret_left(replicate: FakeReplicate, telegram: FakeTelegram) -> None:
    """Nothing sent to Replicate names a Telegram file URL: it carries the bot token."""
    sent = json.dumps([replicate.creates, replicate.training_creates, replicate.model_creates])
    assert BOT_TOKEN not in sent
    assert telegram.url not in sent
    assert "/file/bot" not in sent


def assert_archive_uploaded(replicate: FakeReplicate, archive: bytes) -> None:
    """The ZIP went to Replicate's files API, and the training's input names that file."""
    [(file_id, content)] = replicate.files.items()
    assert content == archive
    [training] = replicate.training_creates
    assert training["input"]["input_images"] == replicate.file_objects[file_id]["urls"]["get"]


def expected_destination(trigger_word: str) -> str:
    return f"aibot-owner/lora-image_bot-{USER}-{trigger_word}"


# --- trainings ------------------------------------------------------------------------------------


async def test_a_training_finished_by_its_webhook_on_plan_a(
    make_app: AppFactory,
    telegram: FakeTelegram,
    replicate: FakeReplicate,
    redis_url: str,
    database_url: str,
) -> None:
    port = closed_port()
    # A try waits on the training for 0.2 s, then comes back a minute later: only the webhook (which
    # wakes the job) can finish it within the test.
    app = await make_app(
        database_url=database_url,
        redis_url=redis_url,
        http_port=port,
        webhook_base_url=f"http://127.0.0.1:{port}",
        new_user_bonus=BONUS,
        job_wait_budget=0.2,
        long_wait_poll=60,
    )
    hold = asyncio.Event()
    replicate.script_training(Outcome(hold=hold))
    chat = Chat(telegram)
    archive = photos_zip(12)
    send_archive(telegram, chat, archive, caption="/train tok_me")
    await chat.reply("Your model is training")
    [generation] = await generations_of(app)
    assert generation.plan == "A"

    async def deferred() -> bool:
        [current] = await generations_of(app)
        return current.lease_owner is None and current.status == "running"

    await wait_until(deferred)
    hold.set()  # the training ends at Replicate, which calls back
    ready = await chat.reply("Your model is ready")
    assert "tok_me" in (ready.text or "")
    await chat.reply("Charged 200 ⭐. Balance: 100 ⭐")
    [generation] = await all_settled(app, 1)
    assert (generation.status, generation.plan, generation.price, generation.refunded) == (
        "done",
        "A",
        200,
        0,
    )

    [training] = replicate.training_creates
    assert training["webhook"] == (
        f"http://127.0.0.1:{port}/webhooks/replicate?generation={generation.id}&step=training"
    )
    assert training["webhook_events_filter"] == ["completed"]
    [callback] = [hook for hook in replicate.webhooks_sent if hook["kind"] == "training"]
    assert (callback["status"], callback["response_status"]) == ("succeeded", 200)
    version = replicate.trainings[training["id"]]["output"]["version"]
    assert version.startswith(expected_destination("tok_me") + ":")
    assert await trained_model(app) == (version, "tok_me")
    assert generation.result == {"version": version, "trigger_word": "tok_me"}
    assert_archive_uploaded(replicate, archive)
    assert_no_telegram_secret_left(replicate, telegram)

    # Replicate delivers the same callback again: nothing changes.
    messages_before = chat.texts()
    steps_before = await journal_of(app, generation.id)
    await replicate.redeliver_last_webhook()
    assert replicate.webhooks_sent[-1]["redelivery"] and replicate.webhooks_sent[-1]["response_status"] == 200
    assert await journal_of(app, generation.id) == steps_before
    [after] = await generations_of(app)
    assert (after.status, after.refunded, after.finished_at) == ("done", 0, generation.finished_at)
    assert chat.texts() == messages_before
    assert await balance_and_ledger_sum(app) == (100, 100)


async def test_a_training_finished_by_polling_on_plan_a_after_a_bad_archive(
    make_app: AppFactory, telegram: FakeTelegram, replicate: FakeReplicate, redis_url: str
) -> None:
    app = await make_app(redis_url=redis_url, new_user_bonus=BONUS)  # no WEBHOOK_BASE_URL: polled
    newer_trainer = "f" * 64
    replicate.add_model(TRAINER_MODEL, newer_trainer)  # the trainer published a new version
    replicate.script_training(Outcome(polls=3))
    chat = Chat(telegram)
    await chat.ask("/train tok_me", "Now send the ZIP archive")
    send_archive(telegram, chat, photos_zip(9))
    await chat.reply("The archive has 9 photo(s)")
    assert replicate.training_creates == []  # the word waits for a better archive
    archive = photos_zip(10)
    send_archive(telegram, chat, archive)  # no caption: the trigger word came with /train
    await chat.reply("Your model is ready")
    await chat.reply("Charged 200 ⭐. Balance: 100 ⭐")
    [generation] = await all_settled(app, 1)
    assert (generation.status, generation.plan) == ("done", "A")

    [training] = replicate.training_creates
    assert training["webhook"] is None
    assert (training["model"], training["version"]) == (TRAINER_MODEL, newer_trainer)
    assert training["destination"] == expected_destination("tok_me")
    assert training["input"]["trigger_word"] == "tok_me"
    [model] = replicate.model_creates
    assert (model["owner"], model["name"], model["visibility"]) == (
        "aibot-owner",
        f"lora-image_bot-{USER}-tok_me",
        "private",
    )
    assert_archive_uploaded(replicate, archive)
    assert_no_telegram_secret_left(replicate, telegram)
    version, trigger_word = await trained_model(app)
    assert version == replicate.trainings[training["id"]]["output"]["version"]
    assert trigger_word == "tok_me"


async def test_a_long_training_on_plan_a_outlasts_many_tries(
    make_app: AppFactory, telegram: FakeTelegram, replicate: FakeReplicate, redis_url: str
) -> None:
    # Every try looks for 50 ms and comes back 50 ms later: a training of hours is thousands of tries.
    app = await make_app(redis_url=redis_url, new_user_bonus=BONUS, job_wait_budget=0.05, long_wait_poll=0.05)
    hold = asyncio.Event()
    replicate.script_training(Outcome(hold=hold))
    chat = Chat(telegram)
    send_archive(telegram, chat, photos_zip(10), caption="/train long_one")

    async def many_tries() -> bool:
        generations = await generations_of(app)
        return bool(generations) and generations[0].attempts >= 15

    await wait_until(many_tries, timeout=20)
    hold.set()
    await chat.reply("Your model is ready", timeout=20)
    [generation] = await all_settled(app, 1)
    assert (generation.status, generation.failures, generation.refunded) == ("done", 0, 0)
    assert len(replicate.training_creates) == 1  # one paid training, however many looks
    assert sum("training" in text for text in chat.texts()) == 1  # "it is training" said once


async def test_on_plan_b_a_trained_model_makes_photos_with_its_trigger_word(
    make_app: AppFactory, telegram: FakeTelegram, replicate: FakeReplicate
) -> None:
    app = await make_app(new_user_bonus=BONUS)
    chat = Chat(telegram)
    await chat.ask("/photo me on a beach", "You have no personal model yet")
    send_archive(telegram, chat, photos_zip(10), caption="/train tok_me")
    await chat.reply("Charged 200 ⭐. Balance: 100 ⭐")
    [training] = await all_settled(app, 1)
    assert (training.plan, training.status) == ("B", "done")
    # Only the file's id is kept, never its bytes; the pipeline fetched it again to upload it.
    assert set(training.request) >= {"zip_file_id", "trigger_word"}
    steps = await journal_of(app, training.id)
    assert len(json.dumps([training.request, steps])) < 5000
    assert steps["zip:url"].startswith(replicate.url + "/v1/files/")
    version, _ = await trained_model(app)
    assert version is not None
    hash_ = version.split(":", 1)[1]

    chat.send("/photo 2 on a beach at sunset")
    await chat.reply("Charged 8 ⭐. Balance: 92 ⭐")
    [create] = replicate.creates
    assert create["version"] == hash_
    assert create["model"] == expected_destination("tok_me")
    assert create["input"]["prompt"] == "tok_me on a beach at sunset"
    assert create["input"]["num_outputs"] == 2
    assert album_images(chat.albums()[0]) == [replicate.png_bytes(0), replicate.png_bytes(1)]
    chat.send("/photo TOK_ME surfing a wave")  # the trigger word is there already
    await chat.reply("Charged 4 ⭐. Balance: 88 ⭐")
    assert replicate.creates[1]["input"]["prompt"] == "TOK_ME surfing a wave"
    photos = [g for g in await all_settled(app, 3) if g.kind == "neuro_photo"]
    assert [g.request["lora_version"] for g in photos] == [version, version]
    assert await balance_and_ledger_sum(app) == (88, 88)


async def test_a_repeated_train_update_is_answered_from_the_record_without_fetching_the_archive(
    make_app: AppFactory, telegram: FakeTelegram, replicate: FakeReplicate
) -> None:
    app = await make_app(new_user_bonus=2 * TRAINING_PRICE)  # enough for the repeat to reach the intake
    chat = Chat(telegram)
    update = send_archive(telegram, chat, photos_zip(10), caption="/train tok_me")
    await chat.reply("Charged 200 ⭐. Balance: 200 ⭐")
    await all_settled(app, 1)
    fetched = sum(call.method == "getFile" for call in telegram.calls)
    ignored = asyncio.Event()
    sink = logger.add(lambda _: ignored.set(), filter=lambda record: "duplicate" in record["message"])
    try:
        telegram.push_update(chat.token, update)  # Telegram delivers the same update again
        await asyncio.wait_for(ignored.wait(), timeout=10)
    finally:
        logger.remove(sink)
    [training] = await all_settled(app, 1)
    assert training.status == "done"
    assert sum(call.method == "getFile" for call in telegram.calls) == fetched  # not checked again
    assert len(replicate.training_creates) == 1
    assert sum("Charged" in text for text in chat.texts()) == 1
    assert await balance_and_ledger_sum(app) == (200, 200)


async def test_a_failed_training_refunds_once_in_the_users_language(
    make_app: AppFactory, telegram: FakeTelegram, replicate: FakeReplicate
) -> None:
    app = await make_app(new_user_bonus=BONUS)
    replicate.script_training(Outcome(status="failed", error="no faces found", polls=1))
    chat = Chat(telegram, language="ru")
    send_archive(telegram, chat, photos_zip(10), caption="/train tok_me")
    await chat.reply("Обучить модель не удалось. Возвращено 200 ⭐. Баланс: 300 ⭐")
    [generation] = await all_settled(app, 1)
    assert (generation.status, generation.refunded) == ("failed", 200)
    assert "no faces found" in (generation.error or "")
    assert await trained_model(app) == (None, None)
    assert not any("Ваша модель готова" in text for text in chat.texts())
    assert app.services is not None
    async with app.services.db.sessions() as session:
        refunds = list(
            await session.scalars(
                select(LedgerEntry).where(LedgerEntry.operation_key == f"refund:{generation.id}")
            )
        )
    assert [entry.amount for entry in refunds] == [200]
    assert await balance_and_ledger_sum(app) == (300, 300)


async def test_a_cancelled_training_is_stopped_at_replicate_refunded_once_and_stores_no_model(
    make_app: AppFactory, telegram: FakeTelegram, replicate: FakeReplicate
) -> None:
    app = await make_app(new_user_bonus=BONUS)
    hold = asyncio.Event()
    replicate.script_training(Outcome(hold=hold))
    chat = Chat(telegram)
    send_archive(telegram, chat, photos_zip(10), caption="/train tok_me")
    await chat.reply("Your model is training")
    chat.send("/cancel")
    await chat.reply("200 ⭐ returned. Balance: 300 ⭐")
    [generation] = await all_settled(app, 1)
    assert (generation.status, generation.refunded) == ("canceled", 200)
    assert replicate.training_cancels == [replicate.training_creates[0]["id"]]
    hold.set()
    assert await trained_model(app) == (None, None)
    assert not any("Your model is ready" in text for text in chat.texts())
    assert await balance_and_ledger_sum(app) == (BONUS, BONUS)


async def test_a_webhook_with_a_bad_signature_is_refused_and_changes_nothing(
    make_app: AppFactory, telegram: FakeTelegram, replicate: FakeReplicate
) -> None:
    port = closed_port()
    app = await make_app(http_port=port, webhook_base_url=f"http://127.0.0.1:{port}", new_user_bonus=BONUS)
    hold = asyncio.Event()
    replicate.script_training(Outcome(hold=hold))
    chat = Chat(telegram)
    send_archive(telegram, chat, photos_zip(10), caption="/train tok_me")
    await chat.reply("Your model is training")
    [generation] = await generations_of(app)
    [training] = replicate.training_creates
    forged = json.dumps({"id": training["id"], "status": "succeeded", "output": {"version": "evil/x:1"}})
    stranger = json.dumps({"id": "someone-elses-training", "status": "succeeded", "output": {}})
    impostor = FakeReplicate(webhook_secret="whsec_" + base64.b64encode(b"not the secret 24 bytes!").decode())
    url = f"http://127.0.0.1:{port}/webhooks/replicate?generation={generation.id}&step=training"
    now = int(time.time())

    def signed(by: FakeReplicate, webhook_id: str, body: str) -> dict[str, str]:
        return {
            "webhook-id": webhook_id,
            "webhook-timestamp": str(now),
            "webhook-signature": by.sign_webhook(webhook_id, now, body),
            "Content-Type": "application/json",
        }

    async with aiohttp.ClientSession() as http:
        async with http.post(url, data=forged, headers=signed(impostor, "msg_forged", forged)) as response:
            assert response.status == 401
        async with http.post(url, data=forged) as response:  # no signature at all
            assert response.status == 401
        # Genuinely signed, but about a job this generation never started: taken, and ignored.
        async with http.post(
            url, data=stranger, headers=signed(replicate, "msg_other", stranger)
        ) as response:
            assert response.status == 200
    assert "training:result" not in await journal_of(app, generation.id)
    assert await trained_model(app) == (None, None)

    hold.set()
    await chat.reply("Charged 200 ⭐")
    await all_settled(app, 1)
    version, _ = await trained_model(app)
    assert version == replicate.trainings[training["id"]]["output"]["version"]
    assert version is not None and not version.startswith("evil/")


async def test_a_training_whose_create_answer_was_lost_is_found_not_paid_twice(
    make_app: AppFactory, telegram: FakeTelegram, replicate: FakeReplicate, sqlite_url: str
) -> None:
    hold = asyncio.Event()
    replicate.script_training(Outcome(hold=hold))
    first = await make_app(new_user_bonus=BONUS)
    chat = Chat(telegram)
    send_archive(telegram, chat, photos_zip(10), caption="/train tok_me")
    await chat.reply("Your model is training")
    [generation] = await generations_of(first)
    await first.stop(grace=0)
    # As if the process had died after Replicate accepted the training but before its id was journaled.
    db = Database(sqlite_url)
    async with db.transaction() as session:
        await session.execute(
            delete(Step).where(Step.generation_id == generation.id, Step.name == "training:id")
        )
    await db.close()

    second = await make_app(new_user_bonus=BONUS)  # resumes the interrupted generation
    hold.set()
    await chat.reply("Charged 200 ⭐. Balance: 100 ⭐")
    [generation] = await all_settled(second, 1)
    assert generation.status == "done"
    [training] = replicate.training_creates  # found again, not created twice
    assert (await journal_of(second, generation.id))["training:id"] == training["id"]
    assert (await trained_model(second))[0] == replicate.trainings[training["id"]]["output"]["version"]


# --- what is refused before any charge -------------------------------------------------------------


async def test_bad_archives_and_trigger_words_charge_nothing_and_call_no_provider(
    make_app: AppFactory, telegram: FakeTelegram, replicate: FakeReplicate
) -> None:
    app = await make_app(new_user_bonus=BONUS)
    chat = Chat(telegram)
    await chat.ask("/train", "Train your personal model on your photos (200 ⭐)")
    await chat.ask("/train x", "trigger word must be 2 to 32 Latin letters")
    await chat.ask("/train two words", "trigger word must be 2 to 32 Latin letters")
    send_archive(telegram, chat, photos_zip(10), caption="/train bad-word!")
    await chat.reply("trigger word must be 2 to 32 Latin letters")

    send_archive(telegram, chat, JPEG, caption="/train tok_me")  # a photo named photos.zip
    await chat.reply("This file is not a ZIP archive")
    send_archive(telegram, chat, photos_zip(9), caption="/train tok_me")
    await chat.reply("The archive has 9 photo(s)")
    bomb = photos_zip(10, **{"photos/huge.jpg": JPEG + b"\x00" * (3 * MB)})
    send_archive(telegram, chat, bomb, caption="/train tok_me")
    await chat.reply("compress far too well")
    telegram.user_message(  # Telegram says how big a document is; 25 MB is more than a bot may fetch
        chat.token,
        user_id=chat.user_id,
        document={"file_name": "photos.zip", "mime_type": "application/zip", "file_size": 25 * MB},
        caption="/train tok_me",
    )
    await chat.reply("The archive is too large: at most 20 MB")
    russian = Chat(telegram, user_id=4004, language="ru")
    send_archive(telegram, russian, photos_zip(3), caption="/train tok_me")
    await russian.reply("В архиве фото (jpg, png или webp): 3; нужно не меньше 10")

    assert replicate.files == {}
    assert replicate.training_creates == [] and replicate.model_creates == [] and replicate.creates == []
    assert await generations_of(app) == []
    assert await balance_and_ledger_sum(app) == (BONUS, BONUS)


async def test_photo_without_a_model_and_training_without_the_stars_charge_nothing(
    make_app: AppFactory, telegram: FakeTelegram, replicate: FakeReplicate
) -> None:
    app = await make_app()
    chat = Chat(telegram)
    answer = await chat.ask("/photo 2 me as a knight", "You have no personal model yet")
    assert "/train" in (answer.text or "")
    await chat.ask("/photo", "Write what to make after the command")
    await Chat(telegram, user_id=4004, language="ru").ask("/photo я рыцарь", "У вас ещё нет личной модели")
    # Training costs more than the 10 ⭐ this user has: said before any archive is fetched.
    first = await chat.ask("/train tok_me", "this costs 200 ⭐, your balance is 10 ⭐")
    send_archive(telegram, chat, photos_zip(10), caption="/train tok_me")
    await telegram.wait_for(
        lambda call: (
            call is not first and call.method == "sendMessage" and "this costs 200 ⭐" in (call.text or "")
        )
    )
    assert not any(call.method == "getFile" for call in telegram.calls)
    assert replicate.creates == []
    assert await generations_of(app) == []
    assert await balance_and_ledger_sum(app) == (10, 10)


# --- HTTP -----------------------------------------------------------------------------------------


class ArchiveServer:
    """Serves archives over loopback HTTP, as an HTTP client's storage would."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.base = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/{name}", self._serve)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.base = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def url(self, name: str, content: bytes | None = None) -> str:
        if content is not None:
            self.files[name] = content
        return f"{self.base}/{name}"

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        content = self.files.get(request.match_info["name"])
        if content is None:
            return web.Response(status=404)
        return web.Response(body=content, content_type="application/zip")


@pytest.fixture
async def archives() -> AsyncIterator[ArchiveServer]:
    server = ArchiveServer()
    await server.start()
    yield server
    await server.stop()


async def post(http: aiohttp.ClientSession, app: App, kind: str, body: dict[str, Any]) -> tuple[int, Any]:
    url = f"http://127.0.0.1:{app.http_port}/api/generation/{kind}"
    async with http.post(url, json=body, headers=AUTH) as response:
        return response.status, await response.json()


async def test_http_model_training_then_neuro_photo(
    make_app: AppFactory, telegram: FakeTelegram, replicate: FakeReplicate, archives: ArchiveServer
) -> None:
    app = await make_app(new_user_bonus=BONUS)
    async with aiohttp.ClientSession() as http:
        status, problems = await post(http, app, "neuro-photo", {**SEED, "prompt": "me"})
        assert status == 422 and problems[0]["code"] == "no_trained_model"

        refused = {
            "not-a-zip.zip": (archives.url("not-a-zip.zip", JPEG), "zip_not_archive"),
            "few.zip": (archives.url("few.zip", photos_zip(4)), "zip_too_few_images"),
            "huge.zip": (archives.url("huge.zip", b"PK" + b"\x00" * (20 * MB)), "zip_too_large"),
            "gone.zip": (archives.url("gone.zip"), "zip_unreachable"),
        }
        for url, code in refused.values():
            status, problems = await post(
                http, app, "model-training", {**SEED, "zip_url": url, "trigger_word": "tok_me"}
            )
            assert status == 422, url
            assert [(problem["field"], problem["code"]) for problem in problems] == [("zip_url", code)]
        status, problems = await post(
            http,
            app,
            "model-training",
            {**SEED, "zip_url": archives.url("ok.zip", photos_zip(10)), "trigger_word": "no spaces"},
        )
        assert status == 422 and problems[0]["field"] == "trigger_word"
        assert replicate.training_creates == [] and replicate.files == {}
        assert await generations_of(app) == []

        zip_url = archives.url("ok.zip")
        status, body = await post(
            http, app, "model-training", {**SEED, "zip_url": zip_url, "trigger_word": "tok_me"}
        )
        assert status == 202
        [training] = await all_settled(app, 1)
        assert (training.id, training.status, training.price) == (body["id"], "done", TRAINING_PRICE)
        # A client's URL reaches the trainer as it is: nothing to hide, nothing to upload.
        assert replicate.training_creates[0]["input"]["input_images"] == zip_url
        assert replicate.files == {}
        await Chat(telegram).reply("Your model is ready")

        status, body = await post(http, app, "neuro-photo", {**SEED, "prompt": "as a pilot", "num_images": 3})
        assert status == 202
        generations = await all_settled(app, 2)
        photo = next(g for g in generations if g.id == body["id"])
        assert (photo.kind, photo.status, photo.price) == ("neuro_photo", "done", 12)
        version, _ = await trained_model(app)
        assert version is not None
        assert replicate.creates[0]["version"] == version.split(":", 1)[1]
        assert replicate.creates[0]["input"]["prompt"] == "tok_me as a pilot"
        async with http.get(
            f"http://127.0.0.1:{app.http_port}/api/generations/{photo.id}", headers=AUTH
        ) as response:
            described = await response.json()
        assert described["status"] == "done" and len(described["urls"]) == 3
    assert await balance_and_ledger_sum(app) == (BONUS - 200 - 12, BONUS - 200 - 12)
