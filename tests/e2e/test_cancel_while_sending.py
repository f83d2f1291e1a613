"""Cancelling around the hand-over of the result: what was delivered is paid, the rest refunded once.

Before the result is handed to the chat a cancellation wins: refunded in full, nothing sent. Once the
upload has begun it is refused (the user is told the result is already on its way), the Cancel button
goes, and the user gets the result and pays for it. Both plans, both databases, the real aiogram and
replicate SDKs against the fakes; an upload is held at the fake Telegram to cancel while it is sent.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from arq.jobs import Job, SerializationError
from sqlalchemy import select

from app import App
from generation.cancellation import cancel_generation
from generation.store import Generation, LedgerEntry
from jobs.queue import deserialize
from tests.conftest import AppFactory
from tests.e2e.helpers import Chat, all_settled, balance_and_ledger_sum, generations_of
from tests.e2e.test_lora import send_archive, trained_model
from tests.e2e.test_speech import recording, stored_voice, voice_message
from tests.fakes.elevenlabs import FakeElevenLabs
from tests.fakes.replicate import FakeReplicate, Outcome
from tests.fakes.telegram import Call, FakeTelegram, Hold
from tests.zip_samples import photos_zip

KLING = "kwaivgi/kling-v1.6-standard"
TOO_LATE = "Too late to cancel: the result is already being sent."
SENDING = "sending the result"
# Short, so the "sending" edit (which waits for the chat's turn) comes at once.
EDIT_INTERVAL = 0.05


def plan_settings(plan: str, redis_url: str) -> dict[str, Any]:
    return {"redis_url": redis_url} if plan == "A" else {}  # without Redis: Plan B


def cancel_data(status: Call) -> str:
    [[button]] = status.params["reply_markup"]["inline_keyboard"]
    return str(button["callback_data"])


async def callback_answer(telegram: FakeTelegram) -> str:
    answer = await telegram.wait_for(lambda call: call.method == "answerCallbackQuery" and call.ok)
    return str(answer.params.get("text", ""))


async def ledger_keys(app: App, generation: Generation) -> list[str]:
    assert app.services is not None
    async with app.services.db.sessions() as session:
        keys = await session.scalars(
            select(LedgerEntry.operation_key)
            .where(LedgerEntry.generation_id == generation.id)
            .order_by(LedgerEntry.id)
        )
        return list(keys)


async def run_ended(app: App, generation_id: str, plan: str) -> str:
    """What the generation's run answered once it ended (its arq job's result, or Plan B's task's);
    "interrupted" when the cancellation stopped it."""
    try:
        if plan == "A":
            assert app.queue is not None
            job = Job(generation_id, app.queue.pool, _deserializer=deserialize)
            return str(await job.result(timeout=15))
        assert app.inline is not None
        task = app.inline.tasks.get(generation_id)
        return "interrupted" if task is None else str(await asyncio.wait_for(task, 15))
    except (asyncio.CancelledError, SerializationError):  # an aborted job's result is its CancelledError
        return "interrupted"


@pytest.mark.parametrize("plan", ["A", "B"])
async def test_a_cancel_while_the_photo_is_being_sent_is_refused_and_the_photo_is_paid_for(
    make_app: AppFactory,
    telegram: FakeTelegram,
    replicate: FakeReplicate,
    database_url: str,
    redis_url: str,
    plan: str,
) -> None:
    app = await make_app(
        database_url=database_url, progress_edit_interval=EDIT_INTERVAL, **plan_settings(plan, redis_url)
    )
    upload = telegram.hold("sendPhoto")
    chat = Chat(telegram)
    chat.send("/image a photo on its way")
    status = await chat.reply("Working on it")
    await asyncio.wait_for(upload.arrived.wait(), 15)

    # The status says it is sending, and its Cancel button is gone...
    sending = await chat.reply(SENDING, method="editMessageText")
    assert sending.params["message_id"] == status.result["message_id"]
    assert "reply_markup" not in sending.params
    # ...but a press made just before that edit reached the user's app still arrives,
    telegram.press_button(
        chat.token, user_id=chat.user_id, message=status.result, data=cancel_data(status), as_shown=True
    )
    assert await callback_answer(telegram) == TOO_LATE
    # and so may /cancel: both are refused, and refund nothing.
    chat.send("/cancel")
    await chat.reply(TOO_LATE)

    upload.release.set()
    await chat.reply("Charged 1 ⭐. Balance: 9 ⭐")
    [generation] = await all_settled(app, 1)
    assert (generation.plan, generation.status, generation.refunded) == (plan, "done", 0)
    assert len(chat.albums()) == 1
    assert not any("Canceled" in text for text in chat.texts())
    assert await ledger_keys(app, generation) == [f"charge:{generation.id}"]
    assert await balance_and_ledger_sum(app) == (9, 9)


@pytest.mark.parametrize("plan", ["A", "B"])
async def test_a_cancel_before_the_hand_over_still_refunds_in_full_and_sends_nothing(
    make_app: AppFactory,
    telegram: FakeTelegram,
    replicate: FakeReplicate,
    database_url: str,
    redis_url: str,
    plan: str,
) -> None:
    app = await make_app(database_url=database_url, **plan_settings(plan, redis_url))
    answered = asyncio.Event()
    replicate.hold_create_answers = answered  # the images exist, not yet handed over
    chat = Chat(telegram)
    chat.send("/image 2 not after all")
    status = await chat.reply("Working on it")
    await replicate.wait_for_create(1)
    telegram.press_button(chat.token, user_id=chat.user_id, message=status.result, data=cancel_data(status))
    assert await callback_answer(telegram) == "✖ Canceled. 2 ⭐ returned. Balance: 10 ⭐"
    answered.set()

    [generation] = await all_settled(app, 1)
    # Interrupted by the cancellation, or (had the interruption come late) stopped at the hand-over.
    assert await run_ended(app, generation.id, plan) in {"interrupted", "canceled"}
    assert (generation.plan, generation.status, generation.refunded) == (plan, "canceled", 2)
    assert chat.albums() == []
    assert await ledger_keys(app, generation) == [f"charge:{generation.id}", f"refund:{generation.id}"]
    assert await balance_and_ledger_sum(app) == (10, 10)


@pytest.mark.parametrize("plan", ["A", "B"])
async def test_a_run_the_cancellation_could_not_stop_sends_nothing_once_cancelled(
    make_app: AppFactory,
    telegram: FakeTelegram,
    replicate: FakeReplicate,
    redis_url: str,
    plan: str,
) -> None:
    """Cancelled from elsewhere (another front's /cancel cannot interrupt a Plan B run here; an abort
    lost with Redis leaves a Plan A job running): the run goes on to its hand-over, finds the
    generation cancelled, and sends nothing, as the user was refunded in full."""
    app = await make_app(**plan_settings(plan, redis_url))
    answered = asyncio.Event()
    replicate.hold_create_answers = answered  # the image exists, not yet handed over
    chat = Chat(telegram)
    chat.send("/image cancelled elsewhere")
    await replicate.wait_for_create(1)
    [running] = await generations_of(app)
    assert app.services is not None
    canceled = await cancel_generation(app.services, running.id)  # refunds; stops no runner
    assert canceled is not None and canceled.refund == 1
    answered.set()

    assert await run_ended(app, running.id, plan) == "canceled"
    [generation] = await all_settled(app, 1)
    assert (generation.status, generation.refunded) == ("canceled", 1)
    assert chat.albums() == []
    assert not any("Charged" in text for text in chat.texts())
    assert await balance_and_ledger_sum(app) == (10, 10)


@pytest.mark.parametrize("plan", ["A", "B"])
async def test_a_cancel_while_the_video_is_being_sent_is_refused(
    make_app: AppFactory,
    telegram: FakeTelegram,
    replicate: FakeReplicate,
    redis_url: str,
    plan: str,
) -> None:
    app = await make_app(
        new_user_bonus=100, progress_edit_interval=EDIT_INTERVAL, **plan_settings(plan, redis_url)
    )
    replicate.script(KLING, Outcome(output=replicate.output_url(0, ext="mp4")))
    upload = telegram.hold("sendVideo")
    chat = Chat(telegram)
    chat.send("/video a slow upload")
    await asyncio.wait_for(upload.arrived.wait(), 15)
    await chat.ask("/cancel", TOO_LATE)
    upload.release.set()
    await chat.reply("Charged 30 ⭐. Balance: 70 ⭐")
    [generation] = await all_settled(app, 1)
    assert (generation.status, generation.refunded) == ("done", 0)
    assert len(telegram.sent(chat.token, chat_id=chat.user_id, methods=["sendVideo"])) == 1
    assert await balance_and_ledger_sum(app) == (70, 70)


async def test_a_cancel_while_the_speech_is_being_sent_is_refused(
    make_app: AppFactory, telegram: FakeTelegram, elevenlabs: FakeElevenLabs
) -> None:
    app = await make_app(progress_edit_interval=EDIT_INTERVAL)
    upload = telegram.hold("sendVoice")
    chat = Chat(telegram)
    chat.send("/speech Too late to take back")
    await asyncio.wait_for(upload.arrived.wait(), 15)
    await chat.ask("/cancel", TOO_LATE)
    upload.release.set()
    await chat.reply("Charged 5 ⭐. Balance: 5 ⭐")
    [generation] = await all_settled(app, 1)
    assert (generation.kind, generation.status, generation.refunded) == ("text_to_speech", "done", 0)
    assert len(telegram.sent(chat.token, chat_id=chat.user_id, methods=["sendVoice"])) == 1
    assert await balance_and_ledger_sum(app) == (5, 5)


# --- results that are stored rather than sent: a cloned voice, a trained model ---------------------


def holding_message(telegram: FakeTelegram, containing: str) -> Hold:
    """Hold only the bot's message that contains `containing` (other messages, /cancel's answer
    among them, go through)."""
    return telegram.hold("sendMessage", only=lambda params: containing in str(params.get("text", "")))


async def test_a_cancel_once_the_cloned_voice_is_stored_is_refused(
    make_app: AppFactory, telegram: FakeTelegram, elevenlabs: FakeElevenLabs
) -> None:
    app = await make_app(new_user_bonus=200, progress_edit_interval=EDIT_INTERVAL)
    told = holding_message(telegram, "Your voice is ready")
    chat = Chat(telegram)
    chat.send("/voice", reply_to_message=voice_message(telegram, recording(1))["message"])
    await asyncio.wait_for(told.arrived.wait(), 15)
    await chat.ask("/cancel", TOO_LATE)  # the voice is the user's already
    told.release.set()
    await chat.reply("Charged 50 ⭐. Balance: 150 ⭐")
    [generation] = await all_settled(app, 1)
    assert (generation.kind, generation.status, generation.refunded) == ("voice_avatar", "done", 0)
    [clone] = elevenlabs.clone_requests
    assert await stored_voice(app) == clone["voice_id"]
    assert elevenlabs.deleted_voices == []
    assert await balance_and_ledger_sum(app) == (150, 150)


async def test_a_cancel_once_the_trained_model_is_stored_is_refused(
    make_app: AppFactory, telegram: FakeTelegram, replicate: FakeReplicate
) -> None:
    app = await make_app(new_user_bonus=300, progress_edit_interval=EDIT_INTERVAL)
    told = holding_message(telegram, "Your model is ready")
    chat = Chat(telegram)
    send_archive(telegram, chat, photos_zip(10), caption="/train tok_me")
    await asyncio.wait_for(told.arrived.wait(), 15)
    await chat.ask("/cancel", TOO_LATE)  # the model is the user's already
    told.release.set()
    await chat.reply("Charged 200 ⭐. Balance: 100 ⭐")
    [generation] = await all_settled(app, 1)
    assert (generation.kind, generation.status, generation.refunded) == ("model_training", "done", 0)
    version, trigger_word = await trained_model(app)
    assert version is not None and trigger_word == "tok_me"
    assert replicate.training_cancels == []
    assert await balance_and_ledger_sum(app) == (100, 100)
