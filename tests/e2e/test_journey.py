"""A user's journey through a bot, as they would live it through the fake Bot API and the real aiogram
polling: the first minute (/start and its keyboard, hints instead of silence), afterwards (/history
and its repeat button, dated /balance lines), choosing models, and the anti-flood door."""

from __future__ import annotations

import asyncio
import re
from typing import Any

from sqlalchemy import select

from app import App
from bot.telegram.flood import FloodMiddleware
from generation import ledger
from generation.store import User
from tests.conftest import OTHER_BOT_TOKEN, AppFactory, wait_until
from tests.e2e.helpers import USER, Chat, all_settled, balance_and_ledger_sum, generations_of
from tests.fakes.elevenlabs import FakeElevenLabs
from tests.fakes.replicate import FakeReplicate, Outcome
from tests.fakes.telegram import Call, FakeTelegram

FLUX = "black-forest-labs/flux-schnell"
MINIMAX = "minimax/video-01"
KLING = "kwaivgi/kling-v1.6-standard"
DATE = re.compile(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}")


def buttons(call: Call) -> list[str]:
    """The callback data of a bot message's inline keyboard, row by row."""
    markup = call.params.get("reply_markup") or {}
    return [button["callback_data"] for row in markup.get("inline_keyboard", []) for button in row]


async def user_row(app: App, telegram_id: int = USER) -> User:
    assert app.services is not None
    async with app.services.db.sessions() as session:
        user = await session.scalar(
            select(User).where(User.telegram_id == telegram_id, User.bot_name == "image_bot")
        )
    assert user is not None
    return user


async def callback_answers(telegram: FakeTelegram, update: dict[str, Any], count: int) -> None:
    """Wait until the button press in `update` was answered `count` times (each delivery handled)."""
    query_id = update["callback_query"]["id"]

    async def answered() -> bool:
        calls = [
            call
            for call in telegram.calls
            if call.method == "answerCallbackQuery" and call.params.get("callback_query_id") == query_id
        ]
        return len(calls) >= count

    await wait_until(answered)


# --- the first minute ----------------------------------------------------------------------------


async def test_start_with_no_stars_shows_the_balance_and_what_to_do_first(
    make_app: AppFactory, telegram: FakeTelegram
) -> None:
    app = await make_app(new_user_bonus=0)
    chat = Chat(telegram)
    greeting = await chat.ask("/start", "Your balance: 0 ⭐")
    assert "top up with the button below" in (greeting.text or "")
    assert "/history" in (greeting.text or "")
    data = buttons(greeting)
    assert "buy" in data  # the payments router's Top up button
    assert {"start:images", "start:video", "start:voice", "start:my_model", "start:language"} <= set(data)

    for button, answer in (
        ("start:images", "Write what to draw after /image"),
        ("start:video", "/animate <what should happen>"),
        ("start:voice", "/voice clones your own voice"),
        ("start:my_model", "Train your personal model"),
    ):
        telegram.press_button(chat.token, user_id=USER, message=greeting.result, data=button)
        await chat.reply(answer)
    telegram.press_button(chat.token, user_id=USER, message=greeting.result, data="start:language")
    await chat.reply("Язык: русский")
    await chat.ask("/start", "Ваш баланс: 0 ⭐")
    assert await generations_of(app) == []
    assert await balance_and_ledger_sum(app) == (0, 0)


async def test_text_and_a_bare_photo_get_a_hint_not_silence(
    make_app: AppFactory, telegram: FakeTelegram, replicate: FakeReplicate
) -> None:
    app = await make_app()
    chat = Chat(telegram)
    chat.send("a cat in a hat")
    await chat.reply("/image a cat in a hat")  # the text offered back as a ready command
    photo = telegram.add_file(chat.token, b"\xff\xd8\xff\xe0 a photo", "photos/file_1.jpg")
    telegram.user_message(chat.token, user_id=USER, photo_file_id=photo)
    await chat.reply("send it with the caption /animate <what should happen>")
    ru = Chat(telegram, user_id=2002, language="ru")
    ru.send("кот в шляпе")
    await ru.reply("/image кот в шляпе")
    # A command nobody knows keeps its own answer.
    await chat.ask("/dance", "I don't know this command")
    assert replicate.creates == []
    assert await generations_of(app) == []
    assert await balance_and_ledger_sum(app) == (10, 10)


async def test_a_pending_voice_or_train_keeps_its_message_from_the_hints(
    make_app: AppFactory, telegram: FakeTelegram, elevenlabs: FakeElevenLabs
) -> None:
    app = await make_app(new_user_bonus=300)
    chat = Chat(telegram)
    await chat.ask("/voice", "Send me a voice message")
    content = elevenlabs.audio_bytes("opus_48000_64") + b"\x01" * 16
    file_id = telegram.add_file(chat.token, content, "voice/file_1.oga")
    telegram.user_message(
        chat.token, user_id=USER, voice={"file_id": file_id, "duration": 12, "file_size": len(content)}
    )
    await chat.reply("Charged 50 ⭐. Balance: 250 ⭐")
    assert len(elevenlabs.clone_requests) == 1
    assert not any("To clone your voice from this recording" in text for text in chat.texts())

    # /train <word> waits for the archive: a text meanwhile is told what the wait is for.
    await chat.ask("/train ivan_photo", "Now send the ZIP archive")
    chat.send("where do I send it?")
    await chat.reply("I'm waiting for the ZIP archive for /train ivan_photo")
    assert not any("Tell me what to make" in text for text in chat.texts())
    await all_settled(app, 1)
    assert await balance_and_ledger_sum(app) == (250, 250)


# --- afterwards ----------------------------------------------------------------------------------


async def test_history_lists_generations_and_repeat_makes_one_new_generation(
    make_app: AppFactory, telegram: FakeTelegram, replicate: FakeReplicate, database_url: str
) -> None:
    app = await make_app(database_url=database_url)
    chat = Chat(telegram)
    chat.send("/image a red fox")
    await chat.reply("Charged 1 ⭐. Balance: 9 ⭐")
    replicate.script(FLUX, Outcome(status="failed", error="CUDA out of memory"))
    chat.send("/image 2 a grey wolf")
    await chat.reply("The generation failed. 2 ⭐ returned. Balance: 9 ⭐")
    done, failed = await all_settled(app, 2)
    assert (done.status, failed.status) == ("done", "failed")

    listing = await chat.ask("/history", "Your recent generations")
    shown = listing.text or ""
    assert "images · Flux Schnell (fast)" in shown
    assert "✅ done · 1 ⭐" in shown
    assert "❌ failed · 2 ⭐, 2 ⭐ returned" in shown
    assert shown.index("“a grey wolf”") < shown.index("“a red fox”")  # newest first
    assert len(DATE.findall(shown)) == 2
    assert set(buttons(listing)) == {f"repeat:{done.id}", f"repeat:{failed.id}"}

    # Repeat the fox; Telegram delivers the button press twice.
    hold = asyncio.Event()
    replicate.script(FLUX, Outcome(hold=hold))
    press = telegram.press_button(chat.token, user_id=USER, message=listing.result, data=f"repeat:{done.id}")
    await replicate.wait_for_create(3)
    telegram.push_update(chat.token, press)
    await callback_answers(telegram, press, 2)  # both deliveries handled
    hold.set()
    await chat.telegram.wait_for(
        lambda call: call.method == "sendMessage" and "Charged 1 ⭐. Balance: 8 ⭐" in (call.text or "")
    )
    generations = await all_settled(app, 3)
    assert len(generations) == 3
    assert replicate.create_count(FLUX) == 3
    assert replicate.creates[-1]["input"]["prompt"] == "a red fox"
    repeated = generations[-1]
    assert (repeated.kind, repeated.model, repeated.status, repeated.price) == (
        "text_to_image",
        "flux-schnell",
        "done",
        1,
    )
    assert repeated.request_key.startswith("tg:image_bot:")
    assert await balance_and_ledger_sum(app) == (8, 8)


async def test_a_repeat_the_balance_cannot_pay_for_offers_a_top_up_and_records_nothing(
    make_app: AppFactory, telegram: FakeTelegram, replicate: FakeReplicate
) -> None:
    app = await make_app(new_user_bonus=1)
    chat = Chat(telegram)
    chat.send("/image a red fox")
    await chat.reply("Charged 1 ⭐. Balance: 0 ⭐")
    [done] = await all_settled(app, 1)
    listing = await chat.ask("/history", "Your recent generations")
    telegram.press_button(chat.token, user_id=USER, message=listing.result, data=f"repeat:{done.id}")
    refusal = await chat.reply("Not enough stars: this costs 1 ⭐, your balance is 0 ⭐")
    assert any(data.startswith("buy") for data in buttons(refusal))
    assert len(await generations_of(app)) == 1
    assert replicate.create_count() == 1
    assert await balance_and_ledger_sum(app) == (0, 0)


async def test_voice_clones_and_trainings_offer_no_repeat(
    make_app: AppFactory, telegram: FakeTelegram, elevenlabs: FakeElevenLabs
) -> None:
    app = await make_app(new_user_bonus=200)
    chat = Chat(telegram)
    content = elevenlabs.audio_bytes("opus_48000_64") + b"\x02" * 16
    file_id = telegram.add_file(chat.token, content, "voice/file_1.oga")
    telegram.user_message(
        chat.token,
        user_id=USER,
        caption="/voice",
        voice={"file_id": file_id, "duration": 12, "file_size": len(content)},
    )
    await chat.reply("Charged 50 ⭐")
    chat.send("/speech Hello there")
    await chat.reply("Charged 5 ⭐")
    _clone, speech = await all_settled(app, 2)
    listing = await chat.ask("/history", "voice clone")
    assert buttons(listing) == [f"repeat:{speech.id}"]
    assert "speech" in (listing.text or "")
    assert await balance_and_ledger_sum(app) == (145, 145)


async def test_balance_shows_dated_lines_with_what_each_was_for(
    make_app: AppFactory, telegram: FakeTelegram, replicate: FakeReplicate, database_url: str
) -> None:
    app = await make_app(database_url=database_url)
    assert app.services is not None
    chat = Chat(telegram)
    chat.send("/image a lighthouse")
    await chat.reply("Charged 1 ⭐. Balance: 9 ⭐")
    replicate.script(FLUX, Outcome(status="failed", error="boom"))
    chat.send("/image 2 a harbour")
    await chat.reply("2 ⭐ returned")
    await all_settled(app, 2)
    user = await user_row(app)
    async with app.services.db.transaction() as session:  # as the payments router records them
        await ledger.credit(session, user.id, 100, "payment:charge-abc", note="order")
        await ledger.charge(session, user.id, 40, "payment_refund:charge-abc")

    answer = await chat.ask("/balance", "Your balance: 69 ⭐")
    lines = (answer.text or "").splitlines()
    operations = [line for line in lines if DATE.match(line)]
    # Newest first: each line dated, with its amount and what it was for.
    assert [DATE.sub("", line).strip() for line in operations] == [
        "−40 ⭐ refund of a payment",
        "+100 ⭐ top-up",
        "+2 ⭐ refund: images, Flux Schnell (fast)",
        "−2 ⭐ generation: images, Flux Schnell (fast)",
        "−1 ⭐ generation: images, Flux Schnell (fast)",
        "+10 ⭐ credit: welcome bonus",
    ]
    assert "buy" in buttons(answer)  # the Top up button
    await chat.ask("/lang", "Язык: русский")
    russian = await chat.ask("/balance", "Ваш баланс: 69 ⭐")
    assert "пополнение" in (russian.text or "") and "возврат платежа" in (russian.text or "")
    assert await balance_and_ledger_sum(app) == (69, 69)


# --- choice --------------------------------------------------------------------------------------


async def test_a_chosen_video_model_is_remembered_and_used(
    make_app: AppFactory, telegram: FakeTelegram, replicate: FakeReplicate
) -> None:
    app = await make_app(new_user_bonus=200)
    chat = Chat(telegram)
    menu = await chat.ask("/model", "Choose the model for /image")
    assert "models:text_to_video" in buttons(menu) and "models:image_to_video" in buttons(menu)
    telegram.press_button(chat.token, user_id=USER, message=menu.result, data="models:text_to_video")
    video_menu = await chat.reply("Choose the model for /video", method="editMessageText")
    assert {"model:kling-t2v", "model:minimax-t2v"} <= set(buttons(video_menu))
    telegram.press_button(chat.token, user_id=USER, message=menu.result, data="model:minimax-t2v")
    await chat.reply("Model for /video: MiniMax Hailuo video-01 (6 s).", method="editMessageText")
    user = await user_row(app)
    assert user.model_choices == {"text_to_video": "minimax-t2v"}
    assert user.image_model is None  # images keep their own choice

    replicate.script(MINIMAX, Outcome(output=replicate.output_url(0, ext="mp4")))
    chat.send("/video a paper boat on a rainy street")
    await chat.reply("Charged 40 ⭐. Balance: 160 ⭐")
    assert replicate.create_count(MINIMAX) == 1
    assert replicate.create_count(KLING) == 0
    # The menu shows the choice; /model animate goes straight to that kind's models.
    again = await chat.ask("/model animate", "Choose the model for /animate (now: Kling 1.6 from a photo")
    assert "model:minimax-i2v" in buttons(again)
    [generation] = await all_settled(app, 1)
    assert generation.model == "minimax-t2v"
    assert await balance_and_ledger_sum(app) == (160, 160)


# --- anti-flood ----------------------------------------------------------------------------------


async def test_a_flood_is_told_to_slow_down_once_and_charged_nothing(
    make_app: AppFactory, telegram: FakeTelegram, replicate: FakeReplicate
) -> None:
    app = await make_app(flood_limit=3, flood_window=60)
    assert app.bot_dispatcher is not None
    [flood] = [m for m in app.bot_dispatcher.update.outer_middleware if isinstance(m, FloodMiddleware)]
    chat = Chat(telegram)
    await chat.ask("/start", "Your balance: 10 ⭐")
    await chat.ask("/balance", "Your balance: 10 ⭐")
    await chat.ask("/help", "What I can do")
    slow = await chat.ask("/image a cat", "Slow down a little")
    assert re.search(r"Try again in \d+ seconds", slow.text or "")
    chat.send("/image a dog")
    chat.send("/image a bird")

    async def refused_three() -> bool:
        return flood.limiter.refused >= 3

    await wait_until(refused_three)
    # Another user, and the same user through another bot, are not held back.
    await Chat(telegram, user_id=2002).ask("/balance", "Your balance: 10 ⭐")
    await Chat(telegram, token=OTHER_BOT_TOKEN).ask("/balance", "Your balance: 10 ⭐")
    assert sum("Slow down" in text for text in chat.texts()) == 1
    assert replicate.creates == []
    assert await generations_of(app) == []
    assert await balance_and_ledger_sum(app) == (10, 10)
