"""The web chat end to end: a browser's HTTP calls against the whole app in-process (no bot token, so
the chat is on by default), the real routers answering, the fake Replicate making the generations."""

from __future__ import annotations

import asyncio

import aiohttp
from sqlalchemy import select

from app import App
from bot.web_chat import WEB_BOT_NAME
from generation.store import User
from tests.conftest import AppFactory
from tests.e2e.helpers import all_settled
from tests.e2e.web_chat_client import WebChatClient, buttons
from tests.fakes.replicate import FakeReplicate, Outcome

FLUX = "black-forest-labs/flux-schnell"
KLING = "kwaivgi/kling-v1.6-standard"
PNG_1X1 = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000100ffff03000006000557bfabd40000000049454e44ae426082"
)


async def web_chat_app(make_app: AppFactory, **overrides: object) -> App:
    app = await make_app(bot_tokens={}, **overrides)
    assert app.web_chat is not None, "no bot token and loopback: the web chat is on by default"
    return app


async def test_start_is_answered_by_the_start_router(make_app: AppFactory) -> None:
    app = await web_chat_app(make_app, new_user_bonus=10)
    async with WebChatClient(app) as browser:
        await browser.send("/start")
        greeting = await browser.reply("Hi, You!")
        assert "Your balance: 10 ⭐" in greeting["text"]
        assert "/image <prompt>" in greeting["text"]
        mine = [message for message in browser.messages.values() if not message["from"]["is_bot"]]
        assert [message["text"] for message in mine] == ["/start"]  # the user's own message shows too


async def test_image_edits_its_status_then_sends_a_photo_that_downloads(
    make_app: AppFactory, replicate: FakeReplicate
) -> None:
    # Polled a few times, slower than the edit interval: the status message has stages to show.
    app = await web_chat_app(make_app, progress_edit_interval=0.3, replicate_poll_interval=0.35)
    replicate.script(FLUX, Outcome(polls=4))
    async with WebChatClient(app) as browser:
        await browser.send("/image a red fox")
        status = await browser.reply("Working on it")
        photo = await browser.wait_for(lambda message: "photo" in message)
        await browser.reply("Charged 1 ⭐. Balance: 9 ⭐")
        code, content = await browser.media(photo["photo"][-1]["file_id"])
        assert (code, content) == (200, replicate.png_bytes(0))
        edits = [
            event["message"]["text"]
            for event in browser.events
            if event["type"] == "edit" and event["message"]["message_id"] == status["message_id"]
        ]
        assert edits and edits[-1] != status["text"]  # the status moved on while the provider worked
        await browser.gone(status)  # then it was removed, as in Telegram
        [generation] = await all_settled(app, 1)
        assert (generation.bot_name, generation.status) == (WEB_BOT_NAME, "done")
        assert replicate.creates[0]["input"]["prompt"] == "a red fox"


async def test_plan_a_delivers_to_the_page_through_the_embedded_worker(
    make_app: AppFactory, replicate: FakeReplicate, redis_url: str
) -> None:
    app = await web_chat_app(make_app, redis_url=redis_url)
    assert app.worker is not None
    async with WebChatClient(app) as browser:
        await browser.send("/image a red fox")
        photo = await browser.wait_for(lambda message: "photo" in message)
        await browser.reply("Charged 1 ⭐. Balance: 9 ⭐")
        assert (await browser.media(photo["photo"][-1]["file_id"])) == (200, replicate.png_bytes(0))
        [generation] = await all_settled(app, 1)
        assert (generation.plan, generation.status) == ("A", "done")


async def test_history_balance_and_a_repeat_button(make_app: AppFactory, replicate: FakeReplicate) -> None:
    app = await web_chat_app(make_app)
    async with WebChatClient(app) as browser:
        await browser.send("/image a red fox")
        await browser.reply("Charged 1 ⭐. Balance: 9 ⭐")
        [done] = await all_settled(app, 1)
        await browser.send("/balance")
        assert "Your balance: 9 ⭐" in (await browser.reply("Your balance"))["text"]
        await browser.send("/history")
        listing = await browser.reply("Your recent generations")
        assert "“a red fox”" in listing["text"]
        assert buttons(listing) == [f"repeat:{done.id}"]
        assert await browser.press(listing, f"repeat:{done.id}") == 200
        await browser.reply("Charged 1 ⭐. Balance: 8 ⭐")
        assert len(await all_settled(app, 2)) == 2
        assert replicate.creates[-1]["input"]["prompt"] == "a red fox"
        assert await browser.press(listing, "repeat:not-a-button-of-this-message") == 404


async def test_a_photo_with_animate_reaches_the_image_to_video_pipeline(
    make_app: AppFactory, replicate: FakeReplicate
) -> None:
    app = await web_chat_app(make_app, new_user_bonus=100)
    replicate.script(KLING, Outcome(output=replicate.output_url(0, ext="mp4")))
    async with WebChatClient(app) as browser:
        await browser.upload(PNG_1X1, "image/png", "cat.png", caption="/animate the cat yawns")
        await browser.reply("Charged 35 ⭐. Balance: 65 ⭐")
        video = await browser.wait_for(lambda message: "video" in message)
        assert (await browser.media(video["video"]["file_id"])) == (200, replicate.png_bytes(0))
        [uploaded] = replicate.files.values()
        assert uploaded == PNG_1X1  # the page's upload, fetched through the web bot's GetFile
        assert replicate.creates[0]["input"]["prompt"] == "the cat yawns"
        [generation] = await all_settled(app, 1)
        assert (generation.kind, generation.status) == ("image_to_video", "done")


async def test_cancel_during_a_slow_generation_refunds(
    make_app: AppFactory, replicate: FakeReplicate
) -> None:
    app = await web_chat_app(make_app)
    hold = asyncio.Event()
    replicate.script(FLUX, Outcome(hold=hold))
    async with WebChatClient(app) as browser:
        await browser.send("/image 3 never mind")
        await replicate.wait_for_create(1)
        await browser.send("/cancel")
        await browser.reply("Canceled. 3 ⭐ returned. Balance: 10 ⭐")
        hold.set()
        [generation] = await all_settled(app, 1)
        assert (generation.status, generation.refunded) == ("canceled", 3)
        assert not any("photo" in message for message in browser.messages.values())


async def test_two_cookies_are_two_users(make_app: AppFactory) -> None:
    app = await web_chat_app(make_app)
    assert app.services is not None
    async with WebChatClient(app) as first, WebChatClient(app) as second:
        await first.send("/image a red fox")
        await first.reply("Charged 1 ⭐. Balance: 9 ⭐")
        await second.send("/balance")
        assert "Your balance: 10 ⭐" in (await second.reply("Your balance"))["text"]
        assert not any("Charged" in (message.get("text") or "") for message in second.messages.values())
        async with app.services.db.sessions() as session:
            users = list(await session.scalars(select(User).where(User.bot_name == WEB_BOT_NAME)))
        assert len({user.telegram_id for user in users}) == 2
        assert all(2**50 <= user.telegram_id < 2**52 for user in users)


async def test_the_api_refuses_a_browser_without_the_signed_cookie(make_app: AppFactory) -> None:
    app = await web_chat_app(make_app)
    async with WebChatClient(app) as browser:
        browser.http.cookie_jar.clear()
        browser.http.cookie_jar.update_cookies({"aibot_web_chat": f"{2**50 + 1}.forged"})
        async with browser.http.post(f"{browser.base}/chat/api/send", json={"text": "/start"}) as answer:
            assert answer.status == 401


async def test_with_a_bot_token_the_chat_is_off_unless_asked_for(make_app: AppFactory) -> None:
    without = await make_app()
    assert without.web_chat is None
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{without.http_port}/chat") as answer,
    ):
        assert answer.status == 404
    with_both = await make_app(web_chat=True)
    assert with_both.web_chat is not None and WEB_BOT_NAME in with_both.bots
    async with WebChatClient(with_both) as browser:
        await browser.send("/start")
        await browser.reply("Hi, You!")
