"""Self-tests of the fake Telegram Bot API, driven by the real aiogram Bot and Dispatcher."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiogram import Bot, Dispatcher, F
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.exceptions import (
    TelegramBadRequest,
    TelegramConflictError,
    TelegramForbiddenError,
    TelegramRetryAfter,
    TelegramUnauthorizedError,
)
from aiogram.filters import CommandStart
from aiogram.types import (
    BotCommand,
    BufferedInputFile,
    CallbackQuery,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    InputMediaPhoto,
    LabeledPrice,
    Message,
    PreCheckoutQuery,
)

from tests.fakes.telegram import JSON, Call, FakeTelegram, Invoice

TOKEN1 = "123456:ABC-def-first"
TOKEN2 = "654321:XYZ-ghi-second"


def png(width: int, height: int) -> bytes:
    """Enough of a PNG for Telegram-like size sniffing."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + header + b"\0\0\0\0" + b"pixels"


def make_bot(fake: FakeTelegram, token: str) -> Bot:
    return Bot(token, session=AiohttpSession(api=TelegramAPIServer.from_base(fake.url)))


def keyboard(*data: str) -> InlineKeyboardMarkup:
    return InlineKeyboardMarkup(
        inline_keyboard=[[InlineKeyboardButton(text=item.title(), callback_data=item) for item in data]]
    )


@pytest.fixture
async def fake() -> AsyncIterator[FakeTelegram]:
    fake = FakeTelegram()
    await fake.start()
    fake.add_bot(TOKEN1, "first_bot")
    fake.add_bot(TOKEN2, "second_bot")
    yield fake
    await fake.stop()
    assert fake.internal_errors == []


@pytest.fixture
async def bot(fake: FakeTelegram) -> AsyncIterator[Bot]:
    bot = make_bot(fake, TOKEN1)
    yield bot
    await bot.session.close()


async def test_get_me(fake: FakeTelegram, bot: Bot) -> None:
    me = await bot.get_me()

    assert me.id == 123456
    assert me.is_bot is True
    assert me.username == "first_bot"
    assert fake.calls[-1].method == "getMe"
    assert fake.calls[-1].token == TOKEN1


async def test_unknown_token_is_unauthorized(fake: FakeTelegram) -> None:
    stranger = make_bot(fake, "999:unknown")
    try:
        with pytest.raises(TelegramUnauthorizedError):
            await stranger.get_me()
    finally:
        await stranger.session.close()
    assert fake.calls[-1].error == {"ok": False, "error_code": 401, "description": "Unauthorized"}


async def test_send_message_roundtrip(fake: FakeTelegram, bot: Bot) -> None:
    fake.user_message(TOKEN1, user_id=42, text="/start", first_name="Ann")

    first = await bot.send_message(42, "hello", reply_markup=keyboard("buy"))
    second = await bot.send_message(42, "again")

    assert first.text == "hello"
    assert first.chat.id == 42
    assert first.chat.type == "private"
    assert first.chat.first_name == "Ann"
    assert first.from_user is not None and first.from_user.id == 123456 and first.from_user.is_bot
    assert first.message_id == 2  # the user's /start was message 1 of this chat
    assert second.message_id == 3
    assert first.reply_markup is not None
    assert first.reply_markup.model_dump() == keyboard("buy").model_dump()
    calls = fake.sent(TOKEN1, chat_id=42)
    assert [call.params["text"] for call in calls] == ["hello", "again"]
    assert calls[0].params["chat_id"] == 42
    assert calls[0].params["reply_markup"] == {"inline_keyboard": [[{"text": "Buy", "callback_data": "buy"}]]}
    assert calls[0].result["message_id"] == 2
    assert fake.sent(TOKEN2) == []
    assert [message["message_id"] for message in fake.chat_messages(TOKEN1, 42)] == [1, 2, 3]


async def test_send_photo_uploads_bytes(fake: FakeTelegram, bot: Bot) -> None:
    image = png(640, 480)

    message = await bot.send_photo(7, BufferedInputFile(image, "cat.png"), caption="a cat")

    call = fake.sent(TOKEN1, methods=["sendPhoto"])[-1]
    assert call.upload("photo") == image
    assert list(call.files.values()) == [image]
    assert str(call.params["photo"]).startswith("attach://")
    assert message.caption == "a cat"
    assert message.photo is not None
    assert (message.photo[-1].width, message.photo[-1].height) == (640, 480)
    assert message.photo[-1].file_size == len(image)
    assert [size.width for size in message.photo] == [90, 320, 640]
    downloaded = await bot.download(message.photo[-1].file_id)
    assert downloaded is not None and downloaded.read() == image


async def test_send_media_group_of_three_photos(fake: FakeTelegram, bot: Bot) -> None:
    images = [png(100 + i, 100) for i in range(3)]
    media = [
        InputMediaPhoto(media=BufferedInputFile(image, f"{i}.png"), caption=f"#{i}")
        for i, image in enumerate(images)
    ]

    messages = await bot.send_media_group(9, media=media)  # type: ignore[arg-type]

    assert len(messages) == 3
    assert len({message.media_group_id for message in messages}) == 1
    assert messages[0].media_group_id is not None
    assert [message.caption for message in messages] == ["#0", "#1", "#2"]
    assert [message.message_id for message in messages] == [1, 2, 3]
    call = fake.sent(TOKEN1, methods=["sendMediaGroup"])[-1]
    items = call.params["media"]
    assert [item["type"] for item in items] == ["photo"] * 3
    assert all(item["media"].startswith("attach://") for item in items)
    assert [call.files[item["media"].removeprefix("attach://")] for item in items] == images
    assert isinstance(call.result, list) and len(call.result) == 3


async def test_send_media_group_validates_size(fake: FakeTelegram, bot: Bot) -> None:
    one = [InputMediaPhoto(media=BufferedInputFile(png(10, 10), "a.png"))]
    eleven = [InputMediaPhoto(media=BufferedInputFile(png(10, 10), f"{i}.png")) for i in range(11)]

    with pytest.raises(TelegramBadRequest, match="2-10 items"):
        await bot.send_media_group(9, media=one)  # type: ignore[arg-type]
    with pytest.raises(TelegramBadRequest, match="too many messages to send as an album"):
        await bot.send_media_group(9, media=eleven)  # type: ignore[arg-type]
    assert fake.sent(TOKEN1) == []
    assert len(fake.sent(TOKEN1, include_failed=True)) == 2


async def test_fail_next_429_raises_retry_after(fake: FakeTelegram, bot: Bot) -> None:
    fake.fail_next(
        "sendMessage", error_code=429, description="Too Many Requests: retry after 5", retry_after=5
    )

    with pytest.raises(TelegramRetryAfter) as raised:
        await bot.send_message(1, "first")
    second = await bot.send_message(1, "second")

    assert raised.value.retry_after == 5
    failed = fake.sent(TOKEN1, include_failed=True)[0]
    assert failed.result is None
    assert failed.error == {
        "ok": False,
        "error_code": 429,
        "description": "Too Many Requests: retry after 5",
        "parameters": {"retry_after": 5},
    }
    assert second.text == "second"
    assert [call.params["text"] for call in fake.sent(TOKEN1)] == ["second"]


async def test_forbidden_raises_for_that_chat_only(fake: FakeTelegram, bot: Bot) -> None:
    fake.fail_next(
        "sendMessage", error_code=403, description="Forbidden: bot was blocked by the user", chat_id=7
    )

    delivered = await bot.send_message(8, "to someone else")
    with pytest.raises(TelegramForbiddenError, match="bot was blocked by the user"):
        await bot.send_message(7, "to the blocker")
    await bot.send_message(7, "once is enough")

    fake.block_user(TOKEN1, 11)
    with pytest.raises(TelegramForbiddenError):
        await bot.send_photo(11, BufferedInputFile(png(5, 5), "x.png"))
    assert delivered.chat.id == 8
    assert [call.params["text"] for call in fake.sent(TOKEN1)] == ["to someone else", "once is enough"]


async def test_dispatcher_polls_two_bots(fake: FakeTelegram) -> None:
    dp = Dispatcher()

    @dp.message(CommandStart())
    async def start(message: Message, bot: Bot) -> None:
        assert message.from_user is not None
        await message.answer(f"welcome {message.from_user.first_name}")

    bot1, bot2 = make_bot(fake, TOKEN1), make_bot(fake, TOKEN2)
    update1 = fake.user_message(TOKEN1, user_id=101, text="/start", first_name="Ann")
    update2 = fake.user_message(TOKEN2, user_id=202, text="/start", first_name="Bob")
    assert update1["message"]["entities"] == [{"type": "bot_command", "offset": 0, "length": 6}]
    assert update2["update_id"] == update1["update_id"]  # per-bot sequences: ids collide across bots

    polling = asyncio.create_task(dp.start_polling(bot1, bot2, handle_signals=False, polling_timeout=1))
    try:
        reply1 = await fake.wait_for(lambda c: c.method == "sendMessage" and c.token == TOKEN1)
        reply2 = await fake.wait_for(lambda c: c.method == "sendMessage" and c.token == TOKEN2)
        confirmed = await fake.wait_for(
            lambda c: (
                c.method == "getUpdates"
                and c.token == TOKEN1
                and c.params.get("offset") == update1["update_id"] + 1
            )
        )
    finally:
        await dp.stop_polling()
        await polling

    assert (reply1.params["chat_id"], reply1.params["text"]) == (101, "welcome Ann")
    assert (reply2.params["chat_id"], reply2.params["text"]) == (202, "welcome Bob")
    assert confirmed.result == []
    assert fake.pending_updates(TOKEN1) == []
    assert len(fake.sent()) == 2


async def test_same_update_pushed_twice_is_delivered_twice(fake: FakeTelegram, bot: Bot) -> None:
    update = fake.user_message(TOKEN1, user_id=5, text="hi")
    fake.push_update(TOKEN1, update)

    first = await bot.get_updates(timeout=0)
    confirmed = await bot.get_updates(offset=update["update_id"] + 1, timeout=0)
    fake.push_update(TOKEN1, update)
    redelivered = await bot.get_updates(offset=update["update_id"] + 1, timeout=0)

    assert [u.update_id for u in first] == [update["update_id"]] * 2
    assert confirmed == []
    assert [u.update_id for u in redelivered] == [update["update_id"]]
    assert redelivered[0].message is not None and redelivered[0].message.text == "hi"


async def test_duplicate_update_reaches_dispatcher_twice(fake: FakeTelegram) -> None:
    dp = Dispatcher()

    @dp.message()
    async def echo(message: Message) -> None:
        await message.answer(f"echo {message.text}")

    bot = make_bot(fake, TOKEN1)
    update = fake.user_message(TOKEN1, user_id=5, text="once")
    polling = asyncio.create_task(dp.start_polling(bot, handle_signals=False, polling_timeout=1))
    try:
        await fake.wait_for(lambda c: c.method == "sendMessage")
        fake.push_update(TOKEN1, update)
        await fake.wait_for(lambda c: len(fake.sent(TOKEN1)) == 2)
    finally:
        await dp.stop_polling()
        await polling

    assert [call.params["text"] for call in fake.sent(TOKEN1)] == ["echo once", "echo once"]


async def test_long_poll_answers_as_soon_as_an_update_arrives(fake: FakeTelegram, bot: Bot) -> None:
    waiting = asyncio.create_task(bot.get_updates(timeout=30))
    await fake.wait_polling(TOKEN1)
    assert not waiting.done()

    update = fake.user_message(TOKEN1, user_id=3, text="ping")
    updates = await asyncio.wait_for(waiting, timeout=5)

    assert [u.update_id for u in updates] == [update["update_id"]]
    assert await bot.get_updates(offset=update["update_id"] + 1, timeout=1) == []


async def test_get_file_and_download(fake: FakeTelegram, bot: Bot) -> None:
    content = png(1024, 768)
    file_id = fake.add_file(TOKEN1, content, "photos/file_1.jpg")
    update = fake.user_message(TOKEN1, user_id=4, photo_file_id=file_id, caption="look")

    photo = update["message"]["photo"]
    file = await bot.get_file(file_id)
    downloaded = await bot.download(file_id)

    assert photo[-1]["file_id"] == file_id
    assert (photo[-1]["width"], photo[-1]["height"]) == (1024, 768)
    assert update["message"]["caption"] == "look"
    assert file.file_path == "photos/file_1.jpg"
    assert file.file_size == len(content)
    assert downloaded is not None and downloaded.read() == content
    assert fake.add_file(TOKEN1, b"other", "photos/file_1.jpg") != file_id
    other = make_bot(fake, TOKEN2)
    try:
        with pytest.raises(TelegramBadRequest, match="wrong file identifier"):
            await other.get_file(file_id)
    finally:
        await other.session.close()


async def test_file_ids_are_per_bot(fake: FakeTelegram, bot: Bot) -> None:
    sent = await bot.send_photo(1, BufferedInputFile(png(50, 50), "p.png"))
    assert sent.photo is not None
    file_id = sent.photo[-1].file_id

    again = await bot.send_photo(2, file_id)
    other = make_bot(fake, TOKEN2)
    try:
        with pytest.raises(TelegramBadRequest, match="wrong file identifier"):
            await other.send_photo(2, file_id)
    finally:
        await other.session.close()

    assert again.photo is not None and again.photo[-1].file_id == file_id
    with pytest.raises(TelegramBadRequest, match="can't use file of type Photo as Document"):
        await bot.send_document(2, file_id)


async def test_button_press_through_dispatcher(fake: FakeTelegram) -> None:
    dp = Dispatcher()

    @dp.callback_query(F.data == "buy")
    async def on_buy(query: CallbackQuery) -> None:
        await query.answer("done")
        assert isinstance(query.message, Message)
        await query.message.edit_text("bought")

    bot = make_bot(fake, TOKEN1)
    await bot.send_message(55, "Pick one", reply_markup=keyboard("buy", "skip"))
    shown = fake.sent(TOKEN1)[-1].result
    with pytest.raises(AssertionError, match="no button"):
        fake.press_button(TOKEN1, user_id=55, message=shown, data="nope")
    update = fake.press_button(TOKEN1, user_id=55, message=shown, data="buy")

    polling = asyncio.create_task(dp.start_polling(bot, handle_signals=False, polling_timeout=1))
    try:
        edit = await fake.wait_for(lambda c: c.method == "editMessageText")
    finally:
        await dp.stop_polling()
        await polling

    answer = next(call for call in fake.calls if call.method == "answerCallbackQuery")
    assert answer.params["callback_query_id"] == update["callback_query"]["id"]
    assert answer.result is True
    assert edit.params["message_id"] == shown["message_id"]
    assert edit.result["text"] == "bought"
    assert "reply_markup" not in edit.result  # editing without reply_markup drops the keyboard
    assert [message.get("text") for message in fake.chat_messages(TOKEN1, 55)] == ["bought"]
    with pytest.raises(AssertionError, match="no button"):
        fake.press_button(TOKEN1, user_id=55, message=shown, data="buy")


async def test_telegram_validation_errors(fake: FakeTelegram, bot: Bot) -> None:
    with pytest.raises(TelegramBadRequest, match="message text is empty"):
        await bot.send_message(1, "")
    with pytest.raises(TelegramBadRequest, match="message text is empty"):
        await bot.send_message(1, "   \n ")
    with pytest.raises(TelegramBadRequest, match="message is too long"):
        await bot.send_message(1, "x" * 4097)
    with pytest.raises(TelegramBadRequest, match="message caption is too long"):
        await bot.send_photo(1, BufferedInputFile(png(5, 5), "a.png"), caption="c" * 1025)
    with pytest.raises(TelegramBadRequest, match="message to edit not found"):
        await bot.edit_message_text(text="new", chat_id=1, message_id=999)
    with pytest.raises(TelegramBadRequest, match="BUTTON_DATA_INVALID"):
        await bot.send_message(1, "x", reply_markup=keyboard("d" * 65))

    message = await bot.send_message(1, "x" * 4096)
    with pytest.raises(TelegramBadRequest, match="message is not modified"):
        await bot.edit_message_text(text="x" * 4096, chat_id=1, message_id=message.message_id)
    photo = await bot.send_photo(1, BufferedInputFile(png(5, 5), "a.png"))
    with pytest.raises(TelegramBadRequest, match="there is no text in the message to edit"):
        await bot.edit_message_text(text="y", chat_id=1, message_id=photo.message_id)
    with pytest.raises(TelegramBadRequest, match="there is no caption in the message to edit"):
        await bot.edit_message_caption(caption="y", chat_id=1, message_id=message.message_id)
    edited = await bot.edit_message_caption(caption="now", chat_id=1, message_id=photo.message_id)
    assert isinstance(edited, Message) and edited.caption == "now"
    assert await bot.delete_message(1, message.message_id) is True
    with pytest.raises(TelegramBadRequest, match="message to delete not found"):
        await bot.delete_message(1, message.message_id)
    with pytest.raises(TelegramBadRequest, match="message to be replied not found"):
        await bot.send_message(1, "reply", reply_to_message_id=12345)


async def test_parse_modes(fake: FakeTelegram, bot: Bot) -> None:
    html = await bot.send_message(
        1, "<b>Hi</b> &amp; <a href='https://example.com'>link</a> 👍 <i>x</i>", parse_mode="HTML"
    )
    assert html.text == "Hi & link 👍 x"
    assert html.entities is not None
    assert [(e.type, e.offset, e.length, e.url) for e in html.entities] == [
        ("bold", 0, 2, None),
        ("text_link", 5, 4, "https://example.com"),
        ("italic", 13, 1, None),  # the emoji counts as two UTF-16 units
    ]
    with pytest.raises(TelegramBadRequest, match='Unsupported start tag "br"'):
        await bot.send_message(1, "a<br>b", parse_mode="HTML")
    with pytest.raises(TelegramBadRequest, match="Can't find end tag corresponding to start tag"):
        await bot.send_message(1, "<b>open", parse_mode="HTML")
    with pytest.raises(TelegramBadRequest, match=r"Character '\.' is reserved"):
        await bot.send_message(1, "Price: 5.00", parse_mode="MarkdownV2")
    markdown = await bot.send_message(1, r"*Price* 5\.00 [site](https://e.com)", parse_mode="MarkdownV2")
    assert markdown.text == "Price 5.00 site"
    assert markdown.entities is not None
    assert [(e.type, e.offset, e.length) for e in markdown.entities] == [("bold", 0, 5), ("text_link", 11, 4)]


async def test_webhook_commands_chat_and_actions(fake: FakeTelegram, bot: Bot) -> None:
    assert fake.webhook_of(TOKEN1) is None
    with pytest.raises(TelegramBadRequest, match="HTTPS URL must be provided"):
        await bot.set_webhook("http://example.com/hook")
    with pytest.raises(TelegramBadRequest, match="secret token contains unallowed characters"):
        await bot.set_webhook("https://example.com/hook", secret_token="a+b=")

    assert await bot.set_webhook("https://example.com/hook", secret_token="s3cret_-")
    webhook = fake.webhook_of(TOKEN1)
    assert webhook is not None
    assert (webhook["url"], webhook["secret_token"]) == ("https://example.com/hook", "s3cret_-")
    assert (await bot.get_webhook_info()).url == "https://example.com/hook"
    with pytest.raises(TelegramConflictError, match="webhook is active"):
        await bot.get_updates(timeout=0)
    assert await bot.delete_webhook(drop_pending_updates=True)
    assert fake.webhook_of(TOKEN1) is None
    assert (await bot.get_webhook_info()).url == ""

    await bot.set_my_commands([BotCommand(command="start", description="Start")])
    assert fake.commands_of(TOKEN1) == [{"command": "start", "description": "Start"}]
    assert [c.command for c in await bot.get_my_commands()] == ["start"]
    await bot.delete_my_commands()
    assert fake.commands_of(TOKEN1) is None
    with pytest.raises(TelegramBadRequest, match="BOT_COMMAND_INVALID"):
        await bot.set_my_commands([BotCommand(command="Bad Command", description="x")])

    fake.user_message(TOKEN1, user_id=77, text="hi", first_name="Zoe", username="zoe")
    chat = await bot.get_chat(77)
    assert (chat.id, chat.type, chat.first_name, chat.username) == (77, "private", "Zoe", "zoe")
    assert await bot.send_chat_action(77, "typing") is True
    with pytest.raises(TelegramBadRequest, match="wrong parameter action"):
        await bot.send_chat_action(77, "dancing")
    with pytest.raises(TelegramForbiddenError, match="bots"):
        await bot.send_message(654321, "hello other bot")


async def test_raw_http_wire_format(fake: FakeTelegram) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{fake.url}/bot{TOKEN1}/getme?x=1") as resp:
            me = await resp.json()
        async with http.post(f"{fake.url}/bot{TOKEN1}/sendMessage", json={"text": "no chat"}) as resp:
            missing = (resp.status, await resp.json())
        async with http.post(
            f"{fake.url}/bot{TOKEN1}/sendMessage",
            json={"chat_id": "12", "text": "42", "reply_markup": '{"inline_keyboard": []}'},
        ) as resp:
            sent = await resp.json()
        async with http.post(f"{fake.url}/bot{TOKEN1}/sendMessage?chat_id=13", data={"text": "form"}) as resp:
            form = await resp.json()
        async with http.post(f"{fake.url}/bot{TOKEN1}/noSuchMethod") as resp:
            unknown = (resp.status, await resp.json())
        async with http.post(f"{fake.url}/bot1:bad/getMe") as resp:
            unauthorized = (resp.status, await resp.json())

    assert me == {"ok": True, "result": me["result"]}
    assert me["result"]["username"] == "first_bot"
    assert missing == (400, {"ok": False, "error_code": 400, "description": "Bad Request: chat_id is empty"})
    assert sent["ok"] is True and sent["result"]["text"] == "42"
    json_call = fake.sent(TOKEN1)[0]
    assert json_call.params == {"chat_id": 12, "text": "42", "reply_markup": {"inline_keyboard": []}}
    assert form["result"]["chat"]["id"] == 13
    assert unknown == (404, {"ok": False, "error_code": 404, "description": "Not Found: method not found"})
    assert unauthorized == (401, {"ok": False, "error_code": 401, "description": "Unauthorized"})


async def test_wait_for_times_out_with_a_summary(fake: FakeTelegram, bot: Bot) -> None:
    await bot.send_message(1, "only this")

    with pytest.raises(AssertionError, match="only this"):
        await fake.wait_for(lambda c: c.method == "sendVoice", timeout=0.2)

    found: Call = await fake.wait_for(lambda c: c.method == "sendMessage", timeout=0.2)
    assert found.params["text"] == "only this"


async def test_other_media_kinds(fake: FakeTelegram, bot: Bot) -> None:
    video = await bot.send_video(3, BufferedInputFile(b"mp4", "v.mp4"), duration=4, width=640, height=360)
    voice = await bot.send_voice(3, BufferedInputFile(b"ogg", "v.ogg"), duration=2)
    audio = await bot.send_audio(3, BufferedInputFile(b"mp3", "song.mp3"), title="Song", performer="Me")
    document = await bot.send_document(3, BufferedInputFile(b"%PDF", "report.pdf"), caption="report")
    animation = await bot.send_animation(3, BufferedInputFile(b"gif", "a.mp4"))
    by_url = await bot.send_photo(3, "https://example.com/cat.jpg")

    assert video.video is not None and (video.video.duration, video.video.width) == (4, 640)
    assert voice.voice is not None and voice.voice.duration == 2
    assert audio.audio is not None and (audio.audio.title, audio.audio.performer) == ("Song", "Me")
    assert document.document is not None
    assert (document.document.file_name, document.document.mime_type) == ("report.pdf", "application/pdf")
    assert document.caption == "report"
    assert animation.animation is not None and animation.document is not None
    assert by_url.photo is not None
    assert fake.sent(TOKEN1)[-1].params["photo"] == "https://example.com/cat.jpg"
    assert [call.method for call in fake.sent(TOKEN1, chat_id=3)] == [
        "sendVideo",
        "sendVoice",
        "sendAudio",
        "sendDocument",
        "sendAnimation",
        "sendPhoto",
    ]
    assert (await bot.download(document.document.file_id)).read() == b"%PDF"  # type: ignore[union-attr]


async def test_newer_get_updates_terminates_the_pending_one(fake: FakeTelegram, bot: Bot) -> None:
    first = asyncio.create_task(bot.get_updates(timeout=30))
    await fake.wait_polling(TOKEN1)
    second = asyncio.create_task(bot.get_updates(timeout=30))

    with pytest.raises(TelegramConflictError, match="terminated by other getUpdates request"):
        await asyncio.wait_for(first, timeout=5)
    update = fake.user_message(TOKEN1, user_id=1, text="x")
    assert [u.update_id for u in await asyncio.wait_for(second, timeout=5)] == [update["update_id"]]


# --------------------------------------------------------------------------- Telegram Stars payments


def stars(amount: int) -> list[LabeledPrice]:
    return [LabeledPrice(label=f"{amount} stars", amount=amount)]


async def send_stars_invoice(bot: Bot, chat_id: int, payload: str = "order-1", amount: int = 50) -> Message:
    return await bot.send_invoice(
        chat_id,
        title="100 stars",
        description="Top up",
        payload=payload,
        currency="XTR",
        prices=stars(amount),
    )


async def test_send_invoice_in_stars(fake: FakeTelegram, bot: Bot) -> None:
    fake.user_message(TOKEN1, user_id=42, text="/buy")

    message = await bot.send_invoice(
        42,
        title="100 stars",
        description="Top up your balance",
        payload="order-7f3a",
        currency="XTR",
        prices=stars(75),
        provider_token="",
        start_parameter="topup",
    )
    with_button = await bot.send_invoice(
        42,
        title="t",
        description="d",
        payload="order-2",
        currency="XTR",
        prices=stars(1),
        reply_markup=InlineKeyboardMarkup(
            inline_keyboard=[[InlineKeyboardButton(text="Pay 1 ⭐", pay=True)]]
        ),
    )

    assert message.invoice is not None
    assert message.invoice.model_dump() == {
        "title": "100 stars",
        "description": "Top up your balance",
        "start_parameter": "topup",
        "currency": "XTR",
        "total_amount": 75,
    }
    assert message.message_id == 2 and message.chat.id == 42
    assert message.reply_markup is None  # clients draw the Pay button themselves
    assert with_button.reply_markup is not None
    assert with_button.invoice is not None and with_button.invoice.start_parameter == ""
    assert fake.invoices(TOKEN1) == [
        Invoice(TOKEN1, 42, 2, "100 stars", "Top up your balance", "order-7f3a", "XTR", 75, "topup"),
        Invoice(TOKEN1, 42, 3, "t", "d", "order-2", "XTR", 1, ""),
    ]
    assert fake.invoices(TOKEN1, chat_id=7) == [] and fake.invoices(TOKEN2) == []
    call = fake.sent(TOKEN1)[0]
    assert call.method == "sendInvoice"
    assert call.params["prices"] == [{"label": "75 stars", "amount": 75}]
    assert call.result["invoice"]["total_amount"] == 75


async def test_send_invoice_validation(fake: FakeTelegram, bot: Bot) -> None:
    def invoice(**overrides: object) -> dict[str, object]:
        params: dict[str, object] = {
            "chat_id": 5,
            "title": "Stars",
            "description": "Top up",
            "payload": "order-1",
            "currency": "XTR",
            "prices": stars(10),
        }
        params.update(overrides)
        return params

    cases: list[tuple[dict[str, object], str]] = [
        (invoice(provider_token="284685063:TEST:abc"), "Bad Request: PAYMENT_PROVIDER_INVALID"),
        (invoice(currency="USD"), "Bad Request: PAYMENT_PROVIDER_INVALID"),
        (invoice(prices=stars(10) + stars(5)), "Bad Request: STARS_INVOICE_INVALID"),
        (invoice(max_tip_amount=5), "Bad Request: STARS_INVOICE_INVALID"),
        (invoice(prices=stars(0)), "Bad Request: total price must be positive"),
        (invoice(prices=stars(-3)), "Bad Request: total price must be positive"),
        (invoice(prices=stars(10_001)), "Bad Request: CURRENCY_TOTAL_AMOUNT_INVALID"),
        (invoice(prices=[]), "Bad Request: there must be at least one price"),
        (invoice(payload=""), 'Bad Request: parameter "payload" is required'),
        (invoice(payload="é" * 65), "Bad Request: INVOICE_PAYLOAD_INVALID"),
        (invoice(title=""), 'Bad Request: parameter "title" is required'),
        (invoice(title="x" * 33), "Bad Request: INVOICE_TITLE_INVALID"),
        (invoice(description="x" * 256), "Bad Request: INVOICE_DESCRIPTION_INVALID"),
        (
            invoice(
                reply_markup=InlineKeyboardMarkup(
                    inline_keyboard=[[InlineKeyboardButton(text="Site", url="https://example.com")]]
                )
            ),
            "Bad Request: BUTTON_TYPE_INVALID",
        ),
    ]
    for params, description in cases:
        with pytest.raises(TelegramBadRequest) as raised:
            await bot.send_invoice(**params)  # type: ignore[arg-type]
        assert raised.value.message == description, params
    assert await send_stars_invoice(bot, 5, payload="p" * 128, amount=10_000)  # the limits themselves pass

    async with aiohttp.ClientSession() as http:
        for prices, description in (
            ("not json", "can't parse prices JSON object"),
            ('{"label": "x", "amount": 1}', "expected an Array of labeled prices"),
            ('[{"label": "x", "amount": 1.5}]', "can't parse labeled price: Can't parse \"1.5\" as number"),
            ('[{"amount": 1}]', "can't parse labeled price: Can't find field \"label\""),
        ):
            form = {"chat_id": "5", "title": "t", "description": "d", "payload": "p", "currency": "XTR"}
            async with http.post(
                f"{fake.url}/bot{TOKEN1}/sendInvoice", data={**form, "prices": prices}
            ) as resp:
                assert (resp.status, await resp.json()) == (
                    400,
                    {"ok": False, "error_code": 400, "description": f"Bad Request: {description}"},
                )
    assert len(fake.invoices(TOKEN1)) == 1


async def test_pay_through_dispatcher_then_refund(fake: FakeTelegram) -> None:
    dp = Dispatcher()

    @dp.pre_checkout_query()
    async def pre_checkout(query: PreCheckoutQuery) -> None:
        await query.answer(ok=True)

    @dp.message(F.successful_payment)
    async def paid(message: Message) -> None:
        assert message.successful_payment is not None
        payment = message.successful_payment
        await message.answer(f"paid {payment.total_amount} for {payment.invoice_payload}")

    bot = make_bot(fake, TOKEN1)
    start = fake.user_message(TOKEN1, user_id=42, text="/buy", language_code="ru")
    invoice = await send_stars_invoice(bot, 42, payload="order-9", amount=50)
    polling = asyncio.create_task(dp.start_polling(bot, handle_signals=False, polling_timeout=1))
    try:
        payment = await fake.pay(TOKEN1, 42, invoice.message_id, language_code="ru")
        reply = await fake.wait_for(lambda c: c.method == "sendMessage")
    finally:
        await dp.stop_polling()
        await polling

    assert payment.ok and payment.error_message is None
    assert payment.charge_id is not None and payment.charge_id.startswith("stx")
    answer = next(call for call in fake.calls if call.method == "answerPreCheckoutQuery")
    assert answer.params["pre_checkout_query_id"] == payment.query_id
    assert answer.result is True
    assert await fake.pre_checkout_answer(payment.query_id) == {"ok": True, "error_message": None}
    assert reply.params["text"] == "paid 50 for order-9"
    assert payment.update is not None
    paid_message = payment.update["message"]
    assert payment.update["update_id"] == start["update_id"] + 2  # after /buy and the pre-checkout
    assert paid_message["from"]["language_code"] == "ru"
    assert paid_message["chat"]["id"] == 42
    assert paid_message["message_id"] == invoice.message_id + 1
    assert paid_message["successful_payment"] == {
        "currency": "XTR",
        "total_amount": 50,
        "invoice_payload": "order-9",
        "telegram_payment_charge_id": payment.charge_id,
        "provider_payment_charge_id": payment.provider_charge_id,
    }
    [charge] = fake.charges(TOKEN1)
    assert (charge.user_id, charge.charge_id, charge.total_amount, charge.refunded) == (
        42,
        payment.charge_id,
        50,
        False,
    )
    with pytest.raises(AssertionError, match="already paid"):
        await fake.pay(TOKEN1, 42, invoice.message_id)

    other = make_bot(fake, TOKEN2)
    try:
        with pytest.raises(TelegramBadRequest, match="CHARGE_NOT_FOUND"):
            await other.refund_star_payment(42, payment.charge_id)  # another bot's charge
        with pytest.raises(TelegramBadRequest, match="CHARGE_NOT_FOUND"):
            await bot.refund_star_payment(43, payment.charge_id)  # another user
        with pytest.raises(TelegramBadRequest, match="CHARGE_NOT_FOUND"):
            await bot.refund_star_payment(42, "stxunknown")
        with pytest.raises(TelegramBadRequest, match="invalid user_id specified"):
            await bot.refund_star_payment(0, payment.charge_id)
        assert await bot.refund_star_payment(42, payment.charge_id) is True
        with pytest.raises(TelegramBadRequest, match="CHARGE_ALREADY_REFUNDED"):
            await bot.refund_star_payment(42, payment.charge_id)
    finally:
        await bot.session.close()
        await other.session.close()
    assert fake.refunds(TOKEN1) == [(42, payment.charge_id)]
    assert fake.refunds(TOKEN2) == []
    assert fake.charges(TOKEN1)[0].refunded is True


async def test_refused_pre_checkout_charges_nothing(fake: FakeTelegram, bot: Bot) -> None:
    invoice = await send_stars_invoice(bot, 42, payload="stale-order")

    async def refuse() -> None:
        [update] = await bot.get_updates(timeout=5)
        assert update.pre_checkout_query is not None
        query = update.pre_checkout_query
        assert (query.from_user.id, query.invoice_payload, query.total_amount, query.currency) == (
            42,
            "stale-order",
            50,
            "XTR",
        )
        await bot.answer_pre_checkout_query(query.id, ok=False, error_message="This order has expired")

    refusing = asyncio.create_task(refuse())
    payment = await fake.pay(TOKEN1, 42, invoice.message_id)
    await refusing

    assert not payment.ok
    assert payment.error_message == "This order has expired"
    assert (payment.charge_id, payment.update) == (None, None)
    assert fake.charges(TOKEN1) == []
    assert all("successful_payment" not in u.get("message", {}) for u in fake.pending_updates(TOKEN1))


async def test_answer_pre_checkout_query_errors(fake: FakeTelegram, bot: Bot) -> None:
    forged = fake.push_pre_checkout(TOKEN1, 42, payload="never-invoiced", total_amount=999)
    [update] = await bot.get_updates(timeout=0)
    assert update.pre_checkout_query is not None
    assert update.pre_checkout_query.id == forged
    assert update.pre_checkout_query.invoice_payload == "never-invoiced"
    assert update.pre_checkout_query.total_amount == 999
    assert update.pre_checkout_query.from_user.language_code == "en"

    invalid = "query is too old and response timeout expired or query ID is invalid"
    with pytest.raises(TelegramBadRequest, match='parameter "error_message" is required'):
        await bot.answer_pre_checkout_query(forged, ok=False)
    with pytest.raises(TelegramBadRequest, match=invalid):
        await bot.answer_pre_checkout_query("12345", ok=True)
    other = make_bot(fake, TOKEN2)
    try:
        with pytest.raises(TelegramBadRequest, match=invalid):
            await other.answer_pre_checkout_query(forged, ok=True)
    finally:
        await other.session.close()
    assert await bot.answer_pre_checkout_query(forged, ok=False, error_message="Unknown order") is True
    with pytest.raises(TelegramBadRequest, match=invalid):
        await bot.answer_pre_checkout_query(forged, ok=True)  # answered already
    assert await fake.pre_checkout_answer(forged) == {"ok": False, "error_message": "Unknown order"}
    with pytest.raises(AssertionError, match="no pre_checkout_query"):
        await fake.pre_checkout_answer("1", timeout=0.1)

    # A bot that does not answer in time: pay() gives up and a late answer is refused.
    invoice = await send_stars_invoice(bot, 42)
    with pytest.raises(AssertionError, match="was not answered"):
        await fake.pay(TOKEN1, 42, invoice.message_id, timeout=0.2)
    late = fake.pending_updates(TOKEN1)[-1]["pre_checkout_query"]["id"]
    with pytest.raises(TelegramBadRequest, match=invalid):
        await bot.answer_pre_checkout_query(late, ok=True)
    assert fake.charges(TOKEN1) == []
    with pytest.raises(AssertionError, match="no invoice"):
        await fake.pay(TOKEN1, 42, 999)


async def test_payment_updates_follow_allowed_updates_and_redeliver(fake: FakeTelegram, bot: Bot) -> None:
    fake.push_pre_checkout(TOKEN1, 7, payload="a", total_amount=1)
    message = fake.user_message(TOKEN1, user_id=7, text="hi")
    only_messages = await bot.get_updates(timeout=0, allowed_updates=["message"])
    assert [u.update_id for u in only_messages] == [message["update_id"]]  # the pre-checkout was dropped

    await bot.get_updates(offset=message["update_id"] + 1, timeout=0, allowed_updates=[])
    invoice = await send_stars_invoice(bot, 7, payload="b", amount=3)
    delivered: list[JSON] = []

    async def deliver(update: JSON) -> None:
        delivered.append(update)
        if "pre_checkout_query" in update:
            await bot.answer_pre_checkout_query(update["pre_checkout_query"]["id"], ok=True)

    payment = await fake.pay(TOKEN1, 7, invoice.message_id, deliver=deliver)

    assert payment.ok and payment.update is not None
    assert [next(k for k in u if k != "update_id") for u in delivered] == ["pre_checkout_query", "message"]
    assert delivered[1] == payment.update
    updates = await bot.get_updates(offset=message["update_id"] + 1, timeout=0)
    assert [u.update_id for u in updates] == [message["update_id"] + 1, message["update_id"] + 2]
    assert updates[0].pre_checkout_query is not None  # allowed_updates=[] means the default kinds again
    assert updates[1].message is not None and updates[1].message.successful_payment is not None
    fake.push_update(TOKEN1, payment.update)
    again = await bot.get_updates(offset=payment.update["update_id"] + 1, timeout=0)
    assert [u.update_id for u in again] == [payment.update["update_id"]]
    assert again[0].message is not None and again[0].message.successful_payment is not None
    assert again[0].message.successful_payment.telegram_payment_charge_id == payment.charge_id
