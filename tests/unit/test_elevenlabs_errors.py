"""ElevenLabs' error answers (the bodies the real API sends, as the fake reproduces them) map to the
typed errors the runners act on: retry, refund with the right message, or an operator's problem."""

from __future__ import annotations

import pytest
from elevenlabs.core.api_error import ApiError as SdkApiError
from elevenlabs.errors import UnprocessableEntityError

from generation.kinds.speech import recording_file
from generation.texts import all_keys
from providers.elevenlabs import (
    CLONING,
    RecordingRejected,
    VoiceLimitReached,
    VoiceNotFound,
    map_elevenlabs_error,
)
from providers.errors import (
    ProviderMisconfigured,
    ProviderQuotaExceeded,
    ProviderRateLimited,
    ProviderRejected,
    ProviderUnavailable,
    StepError,
)
from tests.fakes.elevenlabs import ApiError


def sdk_error(error: ApiError) -> SdkApiError:
    """What the SDK raises for the fake's answer: its status, JSON body and headers."""
    headers = {"retry-after": str(error.retry_after)} if error.retry_after is not None else {}
    if error.status == 422:
        return UnprocessableEntityError(body=error.body(), headers=headers)
    return SdkApiError(status_code=error.status, body=error.body(), headers=headers)


@pytest.mark.parametrize(
    ("answer", "action", "expected", "retryable"),
    [
        # A quota running out answers 401, like a wrong key: the body's status tells them apart.
        (ApiError.quota_exceeded(), "text to speech", ProviderQuotaExceeded, False),
        (ApiError.invalid_api_key(), "text to speech", ProviderMisconfigured, False),
        (ApiError.too_many_concurrent_requests(), "text to speech", ProviderRateLimited, True),
        (ApiError.system_busy(), CLONING, ProviderRateLimited, True),
        (ApiError.internal_error(), "text to speech", ProviderUnavailable, True),
        (ApiError.voice_limit_reached(), CLONING, VoiceLimitReached, False),
        (ApiError.voice_not_found("abc"), "text to speech", VoiceNotFound, False),
        (ApiError(400, "invalid_content", "File upload is corrupted."), CLONING, RecordingRejected, False),
        (
            ApiError(400, "max_character_limit_exceeded", "too long"),
            "text to speech",
            ProviderRejected,
            False,
        ),
        (ApiError(422, "missing", "Field required"), CLONING, ProviderRejected, False),
    ],
    ids=lambda value: value.detail_status if isinstance(value, ApiError) else None,
)
def test_error_answers_map_to_typed_errors(
    answer: ApiError, action: str, expected: type[StepError], retryable: bool
) -> None:
    mapped = map_elevenlabs_error(sdk_error(answer), action)
    assert type(mapped) is expected
    assert mapped.retryable is retryable
    assert answer.message in str(mapped)
    assert mapped.reason in all_keys()  # every reason is a text the user can be shown


def test_a_rate_limit_carries_retry_after() -> None:
    mapped = map_elevenlabs_error(sdk_error(ApiError.system_busy(retry_after=7)), CLONING)
    assert isinstance(mapped, ProviderRateLimited) and mapped.retry_after == 7.0
    assert map_elevenlabs_error(sdk_error(ApiError.system_busy()), CLONING).retry_after is None


def test_a_validation_error_names_the_fields() -> None:
    body = {"detail": [{"loc": ["body", "name"], "msg": "Field required", "type": "missing"}]}
    mapped = map_elevenlabs_error(UnprocessableEntityError(body=body), CLONING)
    assert type(mapped) is ProviderRejected
    assert "validation_error: body.name: Field required" in str(mapped)


def test_a_bare_404_is_not_taken_for_a_missing_voice() -> None:
    """{"detail": "Not Found"} is a wrong base URL: deleting a voice must not pass for done."""
    mapped = map_elevenlabs_error(
        SdkApiError(status_code=404, body={"detail": "Not Found"}), "voice deletion"
    )
    assert type(mapped) is ProviderRejected


def test_an_answer_without_a_json_body_still_maps() -> None:
    assert type(map_elevenlabs_error(SdkApiError(status_code=502, body="Bad Gateway"), CLONING)) is (
        ProviderUnavailable
    )


@pytest.mark.parametrize(
    ("mime_type", "audio", "expected"),
    [
        ("audio/ogg", b"OggS....", ("recording.ogg", "audio/ogg")),
        ("audio/mpeg; charset=binary", b"", ("recording.mp3", "audio/mpeg")),
        (None, b"ID3\x04rest", ("recording.mp3", "audio/mpeg")),
        (None, b"RIFF\x00\x00\x00\x00WAVEfmt ", ("recording.wav", "audio/wav")),
        (None, b"fLaC\x00", ("recording.flac", "audio/flac")),
        (None, b"\x00\x00\x00\x20ftypM4A ", ("recording.m4a", "audio/mp4")),
        (None, b"no idea", ("recording.bin", "application/octet-stream")),
    ],
)
def test_a_recording_is_named_by_its_type(
    mime_type: str | None, audio: bytes, expected: tuple[str, str]
) -> None:
    assert recording_file(mime_type, audio) == expected
