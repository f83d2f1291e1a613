"""Demo mode end to end: an app without provider keys runs every kind through its real pipeline,
journal, plan and ledger against the local demo server (providers/demo), free and marked as a demo;
with a key set, the real provider (here the fake) is called instead."""

from __future__ import annotations

import io
import wave

import pytest
from PIL import Image

from generation.catalog import Kind
from generation.store import Generation
from tests.conftest import AppFactory
from tests.constants import BOT_TOKEN
from tests.e2e.helpers import USER, Chat, album_images, all_settled, balance_and_ledger_sum
from tests.e2e.test_lora import send_archive, trained_model
from tests.e2e.test_speech import recording, stored_voice, voice_message
from tests.fakes.elevenlabs import FakeElevenLabs
from tests.fakes.replicate import FakeReplicate
from tests.fakes.telegram import FakeTelegram
from tests.zip_samples import photos_zip

BONUS = 10
NO_KEYS = {"replicate_api_token": None, "elevenlabs_api_key": None}
DEMO = "Demo result"


@pytest.fixture(params=["B", "A"])
def plan(request: pytest.FixtureRequest) -> dict[str, str]:
    """The settings for Plan B (Redis down) or Plan A (a real Redis)."""
    if request.param == "A":
        return {"redis_url": str(request.getfixturevalue("redis_url"))}
    return {}


def _free_and_done(generations: list[Generation], plan: str) -> None:
    for generation in generations:
        assert (generation.status, generation.price, generation.plan) == ("done", 0, plan)
        assert generation.result is not None and generation.result["demo"] is True


async def test_images_and_video_are_made_locally_free_and_marked_demo(
    make_app: AppFactory, plan: dict[str, str], telegram: FakeTelegram, replicate: FakeReplicate
) -> None:
    demo_app = await make_app(**NO_KEYS, **plan)
    chat = Chat(telegram)
    chat.send("/image 2 a red fox in the snow")
    done = await chat.reply(DEMO)
    assert "Charged 0 ⭐. Balance: 10 ⭐" in (done.text or "")
    assert "REPLICATE_API_TOKEN" in (done.text or "")
    images = [Image.open(io.BytesIO(content)) for content in album_images(chat.albums()[0])]
    assert [image.size for image in images] == [(512, 512)] * 2
    # Each picture shows the prompt in white on its own background color.
    assert images[0].getpixel((0, 0)) != images[1].getpixel((0, 0))
    lightest = sum(images[0].convert("L").histogram()[201:])
    assert lightest > 100  # pixels of light text (the delivery may recompress, so not exactly white)

    chat.send("/video a cat playing piano")
    await chat.telegram.wait_for(lambda call: call.method == "sendVideo" and call.ok)
    [sent] = telegram.sent(BOT_TOKEN, chat_id=USER, methods=["sendVideo"])
    clip = Image.open(io.BytesIO(sent.upload("video") or b""))
    assert (clip.format, getattr(clip, "n_frames", 1) > 1) == ("GIF", True)  # animated

    generations = await all_settled(demo_app, 2)
    assert [g.kind for g in generations] == ["text_to_image", "text_to_video"]
    _free_and_done(generations, "A" if plan else "B")
    assert await balance_and_ledger_sum(demo_app) == (BONUS, BONUS)
    assert replicate.creates == []  # the real provider's address was never called


async def test_speech_and_a_cloned_voice_are_made_locally_free_and_marked_demo(
    make_app: AppFactory, telegram: FakeTelegram, elevenlabs: FakeElevenLabs
) -> None:
    app = await make_app(**NO_KEYS)
    chat = Chat(telegram)
    chat.send("/speech Hello from the demo.")
    done = await chat.reply(DEMO)
    assert "Charged 0 ⭐" in (done.text or "") and "ELEVENLABS_API_KEY" in (done.text or "")
    [audio] = telegram.sent(BOT_TOKEN, chat_id=USER, methods=["sendAudio"])
    with wave.open(io.BytesIO(audio.upload("audio") or b"")) as spoken:
        assert spoken.getnframes() / spoken.getframerate() >= 0.5

    voice = voice_message(telegram, recording(1))
    chat.send("/voice", reply_to_message=voice["message"])
    await chat.reply("Your voice is ready!")
    cloned = await stored_voice(app)
    assert cloned is not None and cloned.startswith("demo")
    chat.send("/speech Now in my own voice.")
    await chat.telegram.wait_for(
        lambda call: len(telegram.sent(BOT_TOKEN, chat_id=USER, methods=["sendAudio"])) == 2
    )

    generations = await all_settled(app, 3)
    assert [g.kind for g in generations] == ["text_to_speech", "voice_avatar", "text_to_speech"]
    _free_and_done(generations, "B")
    assert generations[2].request["voice_id"] == cloned
    assert await balance_and_ledger_sum(app) == (BONUS, BONUS)
    assert elevenlabs.tts_requests == [] and elevenlabs.clone_requests == []


async def test_a_model_is_trained_and_makes_photos_locally_free(
    make_app: AppFactory, telegram: FakeTelegram, replicate: FakeReplicate
) -> None:
    app = await make_app(**NO_KEYS)
    chat = Chat(telegram)
    send_archive(telegram, chat, photos_zip(10), caption="/train tok_me")
    await chat.reply(DEMO)
    version, trigger = await trained_model(app)
    assert version is not None and trigger == "tok_me"

    chat.send("/photo on a beach")
    await telegram.wait_for(lambda call: call.method in ("sendPhoto", "sendMediaGroup") and call.ok)
    photo = Image.open(io.BytesIO(album_images(chat.albums()[0])[0]))
    assert photo.size == (512, 512)
    generations = await all_settled(app, 2)
    assert [g.kind for g in generations] == ["model_training", "neuro_photo"]
    _free_and_done(generations, "B")
    assert replicate.creates == [] and replicate.training_creates == []


async def test_help_names_the_kinds_in_demo_mode_at_no_price(
    make_app: AppFactory, telegram: FakeTelegram
) -> None:
    await make_app(replicate_api_token=None)
    reply = await Chat(telegram).ask("/help", "Demo mode")
    shown = reply.text or ""
    assert "REPLICATE_API_TOKEN" in shown and "ELEVENLABS_API_KEY" not in shown
    demo_line = shown.split("Demo mode", 1)[1]
    assert {kind.slug for kind in Kind if kind not in (Kind.text_to_speech, Kind.voice_avatar)} <= {
        part.strip() for part in demo_line.split(":", 1)[1].split(",")
    }
    assert "text-to-speech" not in demo_line  # ElevenLabs has its key: speech is live
    assert "Flux Schnell (fast): 0 ⭐" in shown


async def test_with_keys_set_the_real_providers_are_called_and_charged(
    make_app: AppFactory, telegram: FakeTelegram, replicate: FakeReplicate
) -> None:
    app = await make_app()
    assert app.demo is None
    chat = Chat(telegram)
    done = await chat.ask("/image a red fox", "Charged 1 ⭐. Balance: 9 ⭐")
    assert DEMO not in (done.text or "")
    assert replicate.create_count() == 1
    [generation] = await all_settled(app, 1)
    assert generation.result is not None and "demo" not in generation.result
    reply = await Chat(telegram).ask("/help", "Models and prices")
    assert "Demo mode" not in (reply.text or "")
