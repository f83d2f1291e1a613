"""ElevenLabs behind one small interface: speak a text, clone a voice, delete a voice.

Talks through the official `elevenlabs` SDK (AsyncElevenLabs) and maps its errors, whose bodies carry
`{"detail": {"status": ..., "message": ...}}`, to the typed errors of providers/errors.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from elevenlabs.client import AsyncElevenLabs
from elevenlabs.core.api_error import ApiError

import metrics
from providers.aiohttp_transport import AiohttpTransport, without_cookies
from providers.errors import (
    ProviderMisconfigured,
    ProviderQuotaExceeded,
    ProviderRateLimited,
    ProviderRejected,
    ProviderUnavailable,
    StepError,
)

# The SDK retries clone requests itself and drops the form fields on the retry (a 422 follows);
# the runner decides about retries instead.
NO_SDK_RETRIES: dict[str, Any] = {"max_retries": 0}


class VoiceNotFound(ProviderRejected):
    """The voice asked for does not exist (any more) at ElevenLabs."""

    reason = "failed_voice_not_found"


class VoiceLimitReached(ProviderQuotaExceeded):
    """Every custom voice slot of our ElevenLabs account is taken: an operator must free some."""

    reason = "failed_voice_limit"


class RecordingRejected(ProviderRejected):
    """ElevenLabs could not clone a voice from the recording (not playable audio, no speech)."""

    reason = "failed_recording_rejected"


class ElevenLabsProvider:
    name = "elevenlabs"

    def __init__(self, api_key: str | None, base_url: str) -> None:
        self._api_key = api_key
        self._http = without_cookies(httpx.AsyncClient(timeout=60.0, transport=AiohttpTransport()))
        self.client = AsyncElevenLabs(api_key=api_key or "", base_url=base_url, httpx_client=self._http)

    async def speak(self, text: str, voice_id: str, model_id: str, output_format: str) -> bytes:
        self._require_key()
        async with _mapped_errors("text to speech"):
            chunks = [
                chunk
                async for chunk in self.client.text_to_speech.convert(
                    voice_id,
                    text=text,
                    model_id=model_id,
                    output_format=output_format,
                )
            ]
        return b"".join(chunks)

    async def clone_voice(self, name: str, audio: bytes, filename: str, content_type: str) -> str:
        """Instant voice cloning; answers the new voice id."""
        self._require_key()
        async with _mapped_errors(CLONING):
            voice = await self.client.voices.ivc.create(
                name=name,
                files=[(filename, audio, content_type)],
                remove_background_noise=True,
                request_options=NO_SDK_RETRIES,
            )
        return str(voice.voice_id)

    async def find_voice(self, name: str) -> str | None:
        """The id of our voice named exactly `name`, if there is one: a clone whose answer was lost
        (the process died mid-call) is found here instead of being paid for twice."""
        self._require_key()
        async with _mapped_errors("voice search"):
            page = await self.client.voices.search(
                search=name, voice_type="personal", page_size=100, request_options=NO_SDK_RETRIES
            )
        return next((str(voice.voice_id) for voice in page.voices if voice.name == name), None)

    async def delete_voice(self, voice_id: str) -> None:
        """Free a voice slot; a voice already gone is fine."""
        self._require_key()
        try:
            async with _mapped_errors("voice deletion"):
                await self.client.voices.delete(voice_id, request_options=NO_SDK_RETRIES)
        except VoiceNotFound:
            return

    def _require_key(self) -> None:
        if not self._api_key:
            raise ProviderMisconfigured("ELEVENLABS_API_KEY is not set")

    async def close(self) -> None:
        await self._http.aclose()


@asynccontextmanager
async def _mapped_errors(action: str) -> AsyncIterator[None]:
    """Turn the SDK's and httpx's exceptions into typed errors; every call is counted and timed here
    (metrics.py), with the typed error it ended in."""
    with metrics.provider_call(ElevenLabsProvider.name, action):
        try:
            yield
        except StepError:
            raise
        except ApiError as error:
            raise map_elevenlabs_error(error, action) from None
        except (httpx.TimeoutException, httpx.TransportError) as error:
            raise ProviderUnavailable(f"elevenlabs {action}: {type(error).__name__}") from None


CLONING = "voice cloning"
BUSY_STATUSES = {"too_many_concurrent_requests", "system_busy", "rate_limit_exceeded"}
QUOTA_STATUSES = {"quota_exceeded", "payment_required"}
VOICE_MISSING_STATUSES = {"voice_not_found", "voice_does_not_exist"}


def map_elevenlabs_error(error: ApiError, action: str) -> StepError:
    """ElevenLabs answers `{"detail": {"status", "message"}}`; the status names the problem better than
    the HTTP code (a quota running out is a 401, like a wrong key)."""
    status = error.status_code or 0
    detail_status, message = _detail(error.body)
    text = f"elevenlabs {action} answered {status} {detail_status}: {message}".strip()
    if status == 429 or detail_status in BUSY_STATUSES:
        return ProviderRateLimited(text, retry_after=_retry_after(error.headers))
    if detail_status == "voice_limit_reached":
        return VoiceLimitReached(text)
    if detail_status in QUOTA_STATUSES or status == 402:
        return ProviderQuotaExceeded(text)
    if status == 401 or detail_status in {"invalid_api_key", "missing_permissions"}:
        return ProviderMisconfigured(text)
    if status >= 500 or status == 0:
        return ProviderUnavailable(text)
    # By its status only: a bare 404 ({"detail": "Not Found"}) is a wrong base URL, not a missing voice.
    if detail_status in VOICE_MISSING_STATUSES:
        return VoiceNotFound(text)
    if action == CLONING and status == 400:
        return RecordingRejected(text)
    return ProviderRejected(text)


def _detail(body: Any) -> tuple[str, str]:
    detail = body.get("detail") if isinstance(body, dict) else None
    if isinstance(detail, dict):
        return str(detail.get("status", "")), str(detail.get("message", ""))[:300]
    if isinstance(detail, list) and detail:
        # FastAPI's 422: which fields, e.g. the form fields the SDK drops when it resends a clone.
        problems = [
            f"{'.'.join(str(part) for part in item.get('loc', []))}: {item.get('msg', '')}"
            for item in detail
            if isinstance(item, dict)
        ]
        return "validation_error", "; ".join(problems)[:300]
    return "", str(detail or "")[:300]


def _retry_after(headers: Any) -> float | None:
    try:
        raw = (headers or {}).get("retry-after") or (headers or {}).get("Retry-After")
        return float(raw) if raw is not None else None
    except (TypeError, ValueError):
        return None
