"""Self-tests of the ElevenLabs fake, driven through the real ``elevenlabs`` SDK client."""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator
from typing import Any

import pytest
from elevenlabs import AsyncElevenLabs
from elevenlabs.core.api_error import ApiError as SdkApiError
from elevenlabs.errors import UnprocessableEntityError

from tests.fakes.elevenlabs import RACHEL_VOICE_ID, ApiError, FakeElevenLabs

MODEL = "eleven_multilingual_v2"
NO_RETRY: Any = {"max_retries": 0}


@pytest.fixture
async def fake() -> AsyncIterator[FakeElevenLabs]:
    server = FakeElevenLabs()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
def client(fake: FakeElevenLabs) -> AsyncElevenLabs:
    return AsyncElevenLabs(api_key="el_test_key", base_url=fake.url)


async def tts(client: AsyncElevenLabs, voice_id: str, text: str, output_format: str, **kw: Any) -> bytes:
    chunks = [
        c
        async for c in client.text_to_speech.convert(
            voice_id, text=text, model_id=MODEL, output_format=output_format, **kw
        )
    ]
    return b"".join(chunks)


def ogg_pages(data: bytes) -> list[tuple[int, int, list[bytes]]]:
    """Parse Ogg pages, checking each CRC with a bitwise (table-free) CRC-32/Ogg."""

    def crc(buf: bytes) -> int:
        value = 0
        for byte in buf:
            value ^= byte << 24
            for _ in range(8):
                value = ((value << 1) ^ 0x04C11DB7) if value & 0x80000000 else value << 1
                value &= 0xFFFFFFFF
        return value

    pages = []
    pos = 0
    while pos < len(data):
        assert data[pos : pos + 4] == b"OggS"
        flags, granule, n_seg = data[pos + 5], struct.unpack_from("<q", data, pos + 6)[0], data[pos + 26]
        lacing = data[pos + 27 : pos + 27 + n_seg]
        end = pos + 27 + n_seg + sum(lacing)
        page = data[pos:end]
        stored = struct.unpack_from("<I", page, 22)[0]
        assert crc(page[:22] + b"\0\0\0\0" + page[26:]) == stored
        packets, cur, offset = [], b"", pos + 27 + n_seg
        for lace in lacing:
            cur += data[offset : offset + lace]
            offset += lace
            if lace < 255:
                packets.append(cur)
                cur = b""
        pages.append((flags, granule, packets))
        pos = end
    return pages


# ---- text to speech ------------------------------------------------------------------------------


async def test_tts_opus_returns_valid_ogg_opus_and_is_recorded(
    fake: FakeElevenLabs, client: AsyncElevenLabs
) -> None:
    audio = await tts(client, RACHEL_VOICE_ID, "Привет, мир", "opus_48000_32")

    assert audio == fake.audio_bytes("opus_48000_32")
    assert audio.startswith(b"OggS")
    pages = ogg_pages(audio)
    assert pages[0][0] == 0x02 and pages[0][2][0].startswith(b"OpusHead")  # beginning of stream
    channels, _pre_skip, rate = struct.unpack_from("<BHI", pages[0][2][0], 9)
    assert (channels, rate) == (1, 48000)
    assert pages[1][2][0].startswith(b"OpusTags")
    assert pages[-1][0] & 0x04 and pages[-1][1] > 0  # end of stream with a granule position

    [req] = fake.tts_requests
    assert req["voice_id"] == RACHEL_VOICE_ID
    assert req["text"] == "Привет, мир"
    assert req["model_id"] == MODEL
    assert req["output_format"] == "opus_48000_32"
    assert req["status"] == 200
    assert fake.request_log == [("POST", f"/v1/text-to-speech/{RACHEL_VOICE_ID}?output_format=opus_48000_32")]


async def test_tts_mp3_streams_id3_then_mpeg_frames(fake: FakeElevenLabs, client: AsyncElevenLabs) -> None:
    chunks = [
        c
        async for c in client.text_to_speech.convert(
            RACHEL_VOICE_ID, text="hello", model_id="eleven_flash_v2_5", output_format="mp3_44100_128"
        )
    ]
    audio = b"".join(chunks)

    assert len(chunks) > 1  # really streamed, in the SDK's 1024-byte chunks
    assert audio == fake.audio_bytes("mp3_44100_128")
    assert audio.startswith(b"ID3")
    id3_size = 10 + sum(b << (7 * (3 - i)) for i, b in enumerate(audio[6:10]))
    assert audio[id3_size] == 0xFF and audio[id3_size + 1] & 0xE0 == 0xE0  # MPEG frame sync
    assert audio[id3_size + 1] == 0xFB  # MPEG-1 layer III
    assert fake.tts_requests[0]["model_id"] == "eleven_flash_v2_5"
    assert fake.tts_requests[0]["output_format"] == "mp3_44100_128"


async def test_tts_default_format_and_stream_endpoint(fake: FakeElevenLabs, client: AsyncElevenLabs) -> None:
    plain = b"".join([c async for c in client.text_to_speech.convert(RACHEL_VOICE_ID, text="a")])
    streamed = b"".join(
        [c async for c in client.text_to_speech.stream(RACHEL_VOICE_ID, text="b", output_format="pcm_16000")]
    )

    assert plain == fake.audio_bytes("mp3_44100_128")  # ElevenLabs' default format
    assert streamed == fake.audio_bytes("pcm_16000")
    assert [r["stream_endpoint"] for r in fake.tts_requests] == [False, True]
    assert fake.tts_requests[0]["model_id"] is None  # omitted by the SDK when not given


def test_audio_bytes_are_deterministic_and_per_format() -> None:
    fake = FakeElevenLabs()
    assert fake.audio_bytes("opus_48000_64") == FakeElevenLabs().audio_bytes("opus_48000_64")
    assert fake.audio_bytes("mp3_22050_32")[:3] == b"ID3"
    assert fake.audio_bytes("wav_16000")[:4] == b"RIFF"
    assert fake.audio_bytes("mp3_22050_32") != fake.audio_bytes("mp3_44100_128")


async def test_tts_unknown_voice_is_404_voice_not_found(
    fake: FakeElevenLabs, client: AsyncElevenLabs
) -> None:
    with pytest.raises(SdkApiError) as err:
        await tts(client, "nope0000000000000000", "hi", "mp3_44100_128")

    assert err.value.status_code == 404
    assert err.value.body["detail"]["status"] == "voice_not_found"
    assert "nope0000000000000000" in err.value.body["detail"]["message"]
    assert fake.tts_requests[0]["status"] == 404


async def test_tts_too_long_text_is_rejected(fake: FakeElevenLabs, client: AsyncElevenLabs) -> None:
    fake.max_text_length = 20
    assert await tts(client, RACHEL_VOICE_ID, "x" * 20, "mp3_44100_128")  # exactly the limit passes

    with pytest.raises(SdkApiError) as err:
        await tts(client, RACHEL_VOICE_ID, "x" * 21, "mp3_44100_128")

    assert err.value.status_code == 400
    assert err.value.body["detail"]["status"] == "max_character_limit_exceeded"
    assert "21 characters" in err.value.body["detail"]["message"]


async def test_tts_invalid_output_format_is_fastapi_422(client: AsyncElevenLabs) -> None:
    with pytest.raises(UnprocessableEntityError) as err:
        await tts(client, RACHEL_VOICE_ID, "hi", "flac_44100")

    assert err.value.status_code == 422
    assert err.value.body["detail"][0]["loc"] == ["query", "output_format"]


# ---- auth -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["wrong-key", None])
async def test_bad_or_missing_api_key_is_401(fake: FakeElevenLabs, key: str | None) -> None:
    client = AsyncElevenLabs(api_key=key, base_url=fake.url)

    with pytest.raises(SdkApiError) as err:
        await tts(client, RACHEL_VOICE_ID, "hi", "mp3_44100_128")
    assert err.value.status_code == 401
    assert err.value.body == {"detail": {"status": "invalid_api_key", "message": "Invalid API key"}}

    with pytest.raises(SdkApiError) as err2:
        await client.voices.ivc.create(name="x", files=[("a.mp3", fake.audio_bytes("mp3_44100_128"))])
    assert err2.value.status_code == 401
    assert fake.tts_requests == [] and fake.clone_requests == [] and len(fake.voices) == 2


# ---- cloning and voices ------------------------------------------------------------------------------


async def test_clone_then_use_then_delete(fake: FakeElevenLabs, client: AsyncElevenLabs) -> None:
    sample = fake.audio_bytes("mp3_44100_128")
    created = await client.voices.ivc.create(
        name="My voice",
        files=[("me.mp3", sample, "audio/mpeg")],
        remove_background_noise=True,
        description="test",
        labels={"lang": "ru"},
    )

    assert created.requires_verification is False
    voice_id = created.voice_id
    assert len(voice_id) == 20 and voice_id in fake.voices
    [req] = fake.clone_requests
    assert req["name"] == "My voice"
    assert req["files"] == [("me.mp3", "audio/mpeg", sample)]
    assert req["remove_background_noise"] is True
    assert req["labels"] == {"lang": "ru"} and req["description"] == "test"

    voice = await client.voices.get(voice_id)
    assert (voice.name, voice.category) == ("My voice", "cloned")
    assert voice.samples is not None and voice.samples[0].size_bytes == len(sample)

    audio = await tts(client, voice_id, "speak in my voice", "opus_48000_64")
    assert audio == fake.audio_bytes("opus_48000_64")
    assert fake.tts_requests[-1]["voice_id"] == voice_id

    deleted = await client.voices.delete(voice_id)
    assert deleted.status == "ok"
    assert fake.deleted_voices == [voice_id]
    assert voice_id not in fake.voices
    with pytest.raises(SdkApiError) as err:
        await tts(client, voice_id, "gone", "opus_48000_64")
    assert err.value.status_code == 404
    with pytest.raises(SdkApiError) as err2:
        await client.voices.get(voice_id)
    assert err2.value.status_code == 404
    with pytest.raises(SdkApiError) as err3:
        await client.voices.delete(voice_id)
    assert err3.value.body["detail"]["status"] == "voice_not_found"


@pytest.mark.parametrize("content", [b"", b"this is not audio at all"])
async def test_clone_rejects_empty_or_non_audio_file(
    fake: FakeElevenLabs, client: AsyncElevenLabs, content: bytes
) -> None:
    with pytest.raises(SdkApiError) as err:
        await client.voices.ivc.create(name="x", files=[("a.txt", content, "text/plain")])

    assert err.value.status_code == 400
    assert err.value.body["detail"]["status"] == "invalid_content"
    assert len(fake.voices) == 2


async def test_clone_without_files_is_422(client: AsyncElevenLabs) -> None:
    with pytest.raises(UnprocessableEntityError) as err:
        await client.voices.ivc.create(name="x", files=[])
    assert err.value.body["detail"][0]["loc"] == ["body", "files"]


async def test_voice_limit_reached(fake: FakeElevenLabs, client: AsyncElevenLabs) -> None:
    fake.max_voices = 2
    sample = [("s.ogg", fake.audio_bytes("opus_48000_32"), "audio/ogg")]
    first = await client.voices.ivc.create(name="one", files=sample)
    await client.voices.ivc.create(name="two", files=sample)

    with pytest.raises(SdkApiError) as err:
        await client.voices.ivc.create(name="three", files=sample)
    assert err.value.status_code == 400
    assert err.value.body["detail"]["status"] == "voice_limit_reached"
    assert "(2 / 2)" in err.value.body["detail"]["message"]
    assert len(fake.cloned_voice_ids) == 2

    await client.voices.delete(first.voice_id)  # freeing a slot allows cloning again
    assert (await client.voices.ivc.create(name="three", files=sample)).voice_id in fake.voices


async def test_list_and_search_voices(fake: FakeElevenLabs, client: AsyncElevenLabs) -> None:
    created = await client.voices.ivc.create(name="Mine", files=[("a.mp3", fake.audio_bytes("mp3_44100_64"))])

    all_v1 = await client.voices.get_all()
    assert {v.voice_id for v in all_v1.voices} == set(fake.voices)
    personal = await client.voices.search(voice_type="personal")
    assert [v.voice_id for v in personal.voices] == [created.voice_id]
    rachel = await client.voices.search(search="rach")
    assert [v.voice_id for v in rachel.voices] == [RACHEL_VOICE_ID]
    page = await client.voices.search(page_size=1)
    assert (len(page.voices), page.has_more, page.total_count) == (1, True, 3)
    rest = await client.voices.search(page_size=5, next_page_token=page.next_page_token)
    assert len(rest.voices) == 2 and not rest.has_more


# ---- injected failures ------------------------------------------------------------------------------


async def test_fail_next_tts_quota_exceeded_once(fake: FakeElevenLabs, client: AsyncElevenLabs) -> None:
    fake.fail_next("tts", ApiError.quota_exceeded(remaining=3, required=40))

    with pytest.raises(SdkApiError) as err:
        await tts(client, RACHEL_VOICE_ID, "hi", "mp3_44100_128")
    assert err.value.status_code == 401
    assert err.value.body["detail"]["status"] == "quota_exceeded"
    assert "3 credits remaining" in err.value.body["detail"]["message"]

    assert await tts(client, RACHEL_VOICE_ID, "hi", "mp3_44100_128") == fake.audio_bytes("mp3_44100_128")
    assert [r["status"] for r in fake.tts_requests] == [401, 200]


async def test_fail_next_rate_limit_with_retry_after_times_two(
    fake: FakeElevenLabs, client: AsyncElevenLabs
) -> None:
    fake.fail_next("tts", ApiError.too_many_concurrent_requests(retry_after=7), times=2)

    for _ in range(2):
        with pytest.raises(SdkApiError) as err:
            await tts(client, RACHEL_VOICE_ID, "hi", "opus_48000_32")
        assert err.value.status_code == 429
        assert err.value.body["detail"]["status"] == "too_many_concurrent_requests"
        assert err.value.headers is not None and err.value.headers["retry-after"] == "7"
    assert await tts(client, RACHEL_VOICE_ID, "hi", "opus_48000_32")


async def test_fail_next_clone_and_delete(fake: FakeElevenLabs, client: AsyncElevenLabs) -> None:
    sample = [("a.mp3", fake.audio_bytes("mp3_44100_128"), "audio/mpeg")]
    fake.fail_next("clone", ApiError(429, "system_busy", "busy"))
    with pytest.raises(SdkApiError) as err:
        await client.voices.ivc.create(name="x", files=sample, request_options=NO_RETRY)
    assert (err.value.status_code, err.value.body["detail"]["status"]) == (429, "system_busy")
    assert len(fake.voices) == 2
    assert fake.clone_requests[0]["status"] == 429

    created = await client.voices.ivc.create(name="x", files=sample)
    fake.fail_next("delete", ApiError(422, "value_error", "bad id"))
    with pytest.raises(UnprocessableEntityError) as err2:
        await client.voices.delete(created.voice_id)
    assert err2.value.body == {"detail": [{"loc": ["body"], "msg": "bad id", "type": "value_error"}]}
    assert created.voice_id in fake.voices and fake.deleted_voices == []


async def test_sdk_retries_delete_after_retry_after(fake: FakeElevenLabs, client: AsyncElevenLabs) -> None:
    created = await client.voices.ivc.create(name="x", files=[("a.mp3", fake.audio_bytes("mp3_44100_32"))])
    fake.fail_next("delete", ApiError.too_many_concurrent_requests(retry_after=1))

    assert (await client.voices.delete(created.voice_id)).status == "ok"  # SDK slept Retry-After, retried
    assert [m for m, p in fake.request_log if p.startswith("/v1/voices/")].count("DELETE") == 2
    assert fake.deleted_voices == [created.voice_id]


async def test_sdk_retry_of_clone_drops_form_fields(fake: FakeElevenLabs, client: AsyncElevenLabs) -> None:
    """elevenlabs 2.x re-sends only the files when it retries a multipart request: the API says 422."""
    fake.fail_next("clone", ApiError.system_busy(retry_after=1))

    with pytest.raises(UnprocessableEntityError) as err:
        await client.voices.ivc.create(name="x", files=[("a.mp3", fake.audio_bytes("mp3_44100_32"))])

    assert err.value.body["detail"][0]["loc"] == ["body", "name"]
    assert [(r["name"], r["status"]) for r in fake.clone_requests] == [("x", 429), (None, 422)]


async def test_unknown_path_is_fastapi_404(client: AsyncElevenLabs) -> None:
    with pytest.raises(SdkApiError) as err:
        await client.models.list()
    assert err.value.status_code == 404
    assert err.value.body == {"detail": "Not Found"}
