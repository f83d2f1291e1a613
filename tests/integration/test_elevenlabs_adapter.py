"""The ElevenLabs adapter through the real SDK against the fake server: what crosses the wire, and
the errors as the SDK really raises them."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from providers.elevenlabs import ElevenLabsProvider, VoiceLimitReached
from providers.errors import ProviderMisconfigured, ProviderRateLimited
from tests.fakes.elevenlabs import RACHEL_VOICE_ID, ApiError, FakeElevenLabs

MODEL = "eleven_multilingual_v2"


@pytest.fixture
async def provider(elevenlabs: FakeElevenLabs) -> AsyncIterator[ElevenLabsProvider]:
    adapter = ElevenLabsProvider(elevenlabs.api_key, elevenlabs.url)
    yield adapter
    await adapter.close()


async def test_speak_clone_find_and_delete(provider: ElevenLabsProvider, elevenlabs: FakeElevenLabs) -> None:
    audio = await provider.speak("Hello", RACHEL_VOICE_ID, MODEL, "opus_48000_64")
    assert audio == elevenlabs.audio_bytes("opus_48000_64")
    [spoken] = elevenlabs.tts_requests
    assert (spoken["text"], spoken["model_id"], spoken["output_format"]) == ("Hello", MODEL, "opus_48000_64")

    sample = elevenlabs.audio_bytes("mp3_44100_128")
    voice_id = await provider.clone_voice("aibot-g1", sample, "recording.mp3", "audio/mpeg")
    [clone] = elevenlabs.clone_requests
    assert clone["name"] == "aibot-g1" and clone["files"] == [("recording.mp3", "audio/mpeg", sample)]
    assert clone["remove_background_noise"] is True

    assert await provider.find_voice("aibot-g1") == voice_id
    assert await provider.find_voice("aibot-g") is None  # a name matches exactly, not as a prefix
    await provider.delete_voice(voice_id)
    await provider.delete_voice(voice_id)  # already gone: fine
    assert elevenlabs.deleted_voices == [voice_id]
    assert await provider.find_voice("aibot-g1") is None


async def test_a_clone_is_tried_once_so_the_sdk_never_resends_it_without_its_fields(
    provider: ElevenLabsProvider, elevenlabs: FakeElevenLabs
) -> None:
    elevenlabs.fail_next("clone", ApiError.system_busy(retry_after=3))
    with pytest.raises(ProviderRateLimited) as raised:
        await provider.clone_voice("aibot-g2", elevenlabs.audio_bytes("mp3_44100_128"), "r.mp3", "audio/mpeg")
    assert raised.value.retry_after == 3.0  # the Retry-After header, through the SDK's error
    assert [clone["status"] for clone in elevenlabs.clone_requests] == [429]
    elevenlabs.fail_next("clone", ApiError.voice_limit_reached())
    with pytest.raises(VoiceLimitReached):
        await provider.clone_voice("aibot-g3", elevenlabs.audio_bytes("mp3_44100_128"), "r.mp3", "audio/mpeg")
    assert elevenlabs.cloned_voice_ids == []


async def test_without_a_key_nothing_is_sent(elevenlabs: FakeElevenLabs) -> None:
    adapter = ElevenLabsProvider(None, elevenlabs.url)
    try:
        with pytest.raises(ProviderMisconfigured):
            await adapter.speak("Hello", RACHEL_VOICE_ID, MODEL, "opus_48000_64")
    finally:
        await adapter.close()
    assert elevenlabs.request_log == []
