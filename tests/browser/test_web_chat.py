"""The web chat in a real headless Chromium (Playwright on the system's Chromium), against the whole
app in-process with no bot token (the chat on by default), driven only through the page's own controls
(the text box, Send and Enter, the file input, the bot's inline buttons): /start, /image (a photo),
a photo captioned /animate (a video, the real Replicate client against the fake), /speech (a voice
message, the real ElevenLabs client against the fake), /history and its repeat button, text kept as
text, and /cancel of a slow generation refunding it. Then the demo mode: an app without provider keys
answers /image in the browser with a locally made photo marked as a demo."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from playwright.async_api import Browser, FilePayload, Page, expect

from tests.conftest import AppFactory
from tests.e2e.helpers import all_settled
from tests.fakes.elevenlabs import FakeElevenLabs
from tests.fakes.replicate import FakeReplicate, Outcome

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOT = ROOT / ".artifacts" / "web_chat.png"
HOSTILE_PROMPT = '<img src=x onerror="window.__pwned = true">'
FLUX = "black-forest-labs/flux-schnell"
KLING = "kwaivgi/kling-v1.6-standard"
PNG_1X1 = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000100ffff03000006000557bfabd40000000049454e44ae426082"
)
BONUS = 100  # /animate costs 35 stars, /speech 5: more than the default 10-star bonus


async def type_and_send(page: Page, text: str, *, enter: bool = True) -> None:
    """Type into the message box and send it with Enter or with the Send button."""
    await page.fill("#text", text)
    if enter:
        await page.press("#text", "Enter")
    else:
        await page.click("#send")


async def test_a_person_chats_with_the_bot_in_a_browser(
    make_app: AppFactory, replicate: FakeReplicate, elevenlabs: FakeElevenLabs, browser: Browser
) -> None:
    app = await make_app(bot_tokens={}, new_user_bonus=BONUS)
    page = await browser.new_page()
    await page.goto(f"http://127.0.0.1:{app.http_port}/chat")
    bot = page.locator(".message:not(.mine)")

    await type_and_send(page, "/start")
    await expect(bot.first).to_contain_text(f"Your balance: {BONUS} ⭐")

    await type_and_send(page, "/image a red fox", enter=False)
    photo = page.locator(".message:not(.mine) img")
    await expect(photo).to_have_count(1)
    await page.wait_for_function("() => document.querySelector('.message:not(.mine) img')?.naturalWidth > 0")
    await expect(page.get_by_text("Charged 1 ⭐. Balance: 99 ⭐")).to_be_visible()

    # A photo attached through the file input, its caption the command: image to video.
    replicate.script(KLING, Outcome(output=replicate.output_url(0, ext="mp4")))
    await page.set_input_files(
        "#file", files=FilePayload(name="cat.png", mimeType="image/png", buffer=PNG_1X1)
    )
    await type_and_send(page, "/animate a slow zoom")
    await expect(page.locator(".message.mine img")).to_have_count(1)  # the upload shows as the user's
    await expect(page.get_by_text("Charged 35 ⭐. Balance: 64 ⭐")).to_be_visible()
    await expect(page.locator(".message:not(.mine) video")).to_have_count(1)
    assert list(replicate.files.values()) == [PNG_1X1]  # the page's upload reached the provider
    assert replicate.creates[-1]["input"]["prompt"] == "a slow zoom"

    await type_and_send(page, "/speech hello")
    await expect(page.get_by_text("Charged 5 ⭐. Balance: 59 ⭐")).to_be_visible()
    await expect(page.locator(".message:not(.mine) audio.voice")).to_have_count(1)

    # /history lists all three, newest first; the fox's repeat button (an inline button) makes it again.
    await type_and_send(page, "/history")
    listing = bot.filter(has_text="Your recent generations (times in UTC)")
    await expect(listing).to_have_count(1)
    for shown in ("1. speech", "“hello”", "2. animated photo", "“a slow zoom”", "3. images", "“a red fox”"):
        await expect(listing).to_contain_text(shown)
    await listing.get_by_role("button", name="Repeat 3").click()
    await expect(page.get_by_text("Charged 1 ⭐. Balance: 58 ⭐")).to_be_visible()
    await expect(photo).to_have_count(2)
    generations = await all_settled(app, 4)
    assert [g.kind for g in generations] == [
        "text_to_image",
        "image_to_video",
        "text_to_speech",
        "text_to_image",
    ]
    assert all(g.status == "done" for g in generations)

    # What comes back from the bot is text, never markup.
    await type_and_send(page, f"/image {HOSTILE_PROMPT}")
    await expect(page.get_by_text("Charged 1 ⭐. Balance: 57 ⭐")).to_be_visible()
    assert await page.evaluate("() => window.__pwned") is None
    assert replicate.creates[-1]["input"]["prompt"] == HOSTILE_PROMPT

    # /cancel while a generation is held at the provider: refunded, and the balance is back.
    hold = asyncio.Event()
    replicate.script(FLUX, Outcome(hold=hold))
    creates = replicate.create_count()
    await type_and_send(page, "/image 3 never mind")
    await replicate.wait_for_create(creates + 1)
    await type_and_send(page, "/cancel")
    await expect(page.get_by_text("Canceled. 3 ⭐ returned. Balance: 57 ⭐")).to_be_visible()
    hold.set()
    settled = await all_settled(app, 6)
    assert (settled[-1].status, settled[-1].refunded) == ("canceled", 3)
    await type_and_send(page, "/balance")
    await expect(bot.filter(has_text="Your balance: 57 ⭐").last).to_be_visible()
    await expect(photo).to_have_count(3)  # the fox, its repeat, the hostile prompt; nothing from the canceled

    SCREENSHOT.parent.mkdir(exist_ok=True)
    await page.screenshot(path=str(SCREENSHOT), full_page=True)


async def test_demo_mode_in_a_browser_makes_a_free_photo_marked_as_a_demo(
    make_app: AppFactory, replicate: FakeReplicate, browser: Browser
) -> None:
    app = await make_app(bot_tokens={}, replicate_api_token=None, elevenlabs_api_key=None)
    page = await browser.new_page()
    await page.goto(f"http://127.0.0.1:{app.http_port}/chat")

    await type_and_send(page, "/image a red fox")
    await expect(page.locator(".message:not(.mine) img")).to_have_count(1)
    await page.wait_for_function("() => document.querySelector('.message:not(.mine) img')?.naturalWidth > 0")
    done = page.locator(".message:not(.mine)").filter(has_text="Demo result")
    await expect(done).to_contain_text("Charged 0 ⭐. Balance: 10 ⭐")
    await expect(done).to_contain_text("REPLICATE_API_TOKEN")
    [generation] = await all_settled(app, 1)
    assert (generation.status, generation.price) == ("done", 0)
    assert generation.result is not None and generation.result["demo"] is True
    assert replicate.creates == []  # the real provider's address was never called
