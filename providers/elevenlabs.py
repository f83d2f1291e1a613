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


class ElevenLabsProvider:
    name = "elevenlabs"

    def __init__(self, api_key: str | None, base_url: str) -> None:
        self._api_key = api_key
        self._http = httpx.AsyncClient(timeout=60.0)
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
        async with _mapped_errors("voice cloning"):
            voice = await self.client.voices.ivc.create(
                name=name,
                files=[(filename, audio, content_type)],
                remove_background_noise=True,
                request_options=NO_SDK_RETRIES,
            )
        return str(voice.voice_id)

    async def delete_voice(self, voice_id: str) -> None:
        """Free a voice slot; a voice already gone is fine."""
        self._require_key()
        try:
            async with _mapped_errors("voice deletion"):
                await self.client.voices.delete(voice_id, request_options=NO_SDK_RETRIES)
        except ProviderRejected as error:
            if "voice_not_found" not in str(error) and "404" not in str(error):
                raise

    def _require_key(self) -> None:
        if not self._api_key:
            raise ProviderMisconfigured("ELEVENLABS_API_KEY is not set")

    async def close(self) -> None:
        await self._http.aclose()


@asynccontextmanager
async def _mapped_errors(action: str) -> AsyncIterator[None]:
    try:
        yield
    except StepError:
        raise
    except ApiError as error:
        raise map_elevenlabs_error(error, action) from None
    except (httpx.TimeoutException, httpx.TransportError) as error:
        raise ProviderUnavailable(f"elevenlabs {action}: {type(error).__name__}") from None


BUSY_STATUSES = {"too_many_concurrent_requests", "system_busy", "rate_limit_exceeded"}


def map_elevenlabs_error(error: ApiError, action: str) -> StepError:
    status = error.status_code or 0
    detail_status, message = _detail(error.body)
    text = f"elevenlabs {action} answered {status} {detail_status}: {message}".strip()
    if status == 429 or detail_status in {
        "too_many_concurrent_requests",
        "system_busy",
        "rate_limit_exceeded",
    }:
        return ProviderRateLimited(text, retry_after=_retry_after(error.headers))
    if detail_status in {"quota_exceeded", "payment_required"} or status == 402:
        return ProviderQuotaExceeded(text)
    if status == 401 or detail_status in {"invalid_api_key", "missing_permissions"}:
        return ProviderMisconfigured(text)
    if status >= 500 or status == 0:
        return ProviderUnavailable(text)
    return ProviderRejected(text)


def _detail(body: Any) -> tuple[str, str]:
    detail = body.get("detail") if isinstance(body, dict) else None
    if isinstance(detail, dict):
        return str(detail.get("status", "")), str(detail.get("message", ""))[:300]
    if isinstance(detail, list) and detail:
        first = detail[0] if isinstance(detail[0], dict) else {}
        return "validation_error", str(first.get("msg", ""))[:300]
    return "", str(detail or "")[:300]


def _retry_after(headers: Any) -> float | None:
    try:
        raw = (headers or {}).get("retry-after") or (headers or {}).get("Retry-After")
        return float(raw) if raw is not None else None
    except (TypeError, ValueError):
        return None
