"""Replicate behind one small interface: create a prediction, read its state, wait for it, fetch outputs.

Talks through the official `replicate` SDK (its async methods) and maps every failure to the typed
errors of providers/errors.py. The SDK retries idempotent GETs on 429/503/504 itself; creates are
never retried here: the runner decides, after journaling.
"""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx
from replicate.client import Client as ReplicateClient
from replicate.exceptions import ReplicateError

import metrics
from providers.aiohttp_transport import AiohttpTransport, without_cookies
from providers.errors import (
    ProviderFailed,
    ProviderMisconfigured,
    ProviderQuotaExceeded,
    ProviderRateLimited,
    ProviderRejected,
    ProviderUnavailable,
    StepError,
)

TERMINAL = {"succeeded", "failed", "canceled"}


@dataclass(frozen=True)
class PredictionState:
    id: str
    status: str
    output: Any
    error: str | None

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL

    def as_json(self) -> dict[str, Any]:
        return {"id": self.id, "status": self.status, "output": self.output, "error": self.error}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PredictionState:
        return cls(id=data["id"], status=data["status"], output=data.get("output"), error=data.get("error"))


def output_urls(output: Any) -> list[str]:
    """Image models answer a list of URLs, some a single URL: always give a list."""
    if output is None:
        return []
    if isinstance(output, str):
        return [output]
    if isinstance(output, list):
        return [item for item in output if isinstance(item, str)]
    raise ProviderFailed(f"unexpected output shape: {type(output).__name__}")


class ReplicateProvider:
    name = "replicate"

    def __init__(
        self, api_token: str | None, base_url: str, poll_interval: float = 1.0, timeout: float = 30.0
    ) -> None:
        self._api_token = api_token
        self.poll_interval = poll_interval
        self.timeout = timeout
        self._retry_after: dict[int, float] = {}
        self._api_transport = AiohttpTransport()
        self.client = ReplicateClient(
            api_token=api_token or "",
            base_url=base_url,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
            event_hooks={"response": [self._remember_retry_after]},
            transport=self._api_transport,
        )
        without_cookies(self.client._async_client)
        self._downloads = without_cookies(
            httpx.AsyncClient(
                timeout=httpx.Timeout(60.0, connect=10.0), follow_redirects=True, transport=AiohttpTransport()
            )
        )

    async def _remember_retry_after(self, response: httpx.Response) -> None:
        # ReplicateError keeps no headers; a 429's Retry-After is read here and attached when mapping.
        if response.status_code == 429:
            self._retry_after[id(asyncio.current_task())] = _parse_retry_after(response.headers)

    async def create_prediction(
        self, ref: str, input: dict[str, Any], webhook: str | None = None, wait: int = 0
    ) -> PredictionState:
        """Start a prediction; answers its state, its id first of all. `ref` is "owner/name" or
        "owner/name:version". `wait`: seconds Replicate may hold the answer for the prediction to
        finish (`Prefer: wait`, 1 to 60): one that finishes sooner comes back with its outcome, and
        nobody needs to poll for it."""
        self._require_token()
        params: dict[str, Any] = {"input": input}
        if webhook:
            params["webhook"] = webhook
            params["webhook_events_filter"] = ["completed"]
        if wait:
            params["wait"] = wait
        async with self._mapped_errors("create"):
            if ":" in ref:
                prediction = await self.client.predictions.async_create(
                    version=ref.split(":", 1)[1], **params
                )
            else:
                prediction = await self.client.models.predictions.async_create(model=ref, **params)
        return _state_of(prediction)

    async def find_prediction(
        self, ref: str, input: dict[str, Any], since: float, taken: Callable[[str], Awaitable[bool]]
    ) -> str | None:
        """The newest prediction of `ref` with exactly this input, created after `since` (epoch
        seconds) and not `taken` by another generation: a create whose answer was lost (the process
        died mid-call) is found here instead of being paid for twice. Looks at a few pages at most."""
        model, _, version = ref.partition(":")
        async with self._mapped_errors("list"):
            page = await self.client.predictions.async_list()
            for _ in range(5):
                for prediction in page.results:
                    created = _epoch(prediction.created_at)
                    if created is not None and created < since:
                        return None  # newest first: everything after is older still
                    same_target = prediction.version == version if version else prediction.model == model
                    if same_target and prediction.input == input and not await taken(prediction.id):
                        return str(prediction.id)
                if not page.next:
                    return None
                page = await self.client.predictions.async_list(page.next)
        return None

    async def get_prediction(self, prediction_id: str) -> PredictionState:
        async with self._mapped_errors("get"):
            prediction = await self.client.predictions.async_get(prediction_id)
        return _state_of(prediction)

    async def wait(self, prediction_id: str, timeout: float) -> PredictionState:
        """Poll until the prediction ends. A timeout raises ProviderUnavailable (retryable: the
        prediction id is journaled, so the next try waits on the same prediction)."""
        deadline = time.monotonic() + timeout
        while True:
            state = await self.get_prediction(prediction_id)
            if state.is_terminal:
                return state
            if time.monotonic() >= deadline:
                raise ProviderUnavailable(
                    f"prediction {prediction_id} still {state.status} after {timeout:.0f}s"
                )
            await asyncio.sleep(self.poll_interval)

    async def cancel(self, prediction_id: str) -> None:
        async with self._mapped_errors("cancel"):
            await self.client.predictions.async_cancel(prediction_id)

    # --- files: inputs the user sent, so a Telegram file URL (it carries the bot token) never leaves ---

    async def upload_file(self, content: bytes, filename: str, content_type: str) -> str:
        """Upload bytes to Replicate's files API; answers the URL a prediction's input can name."""
        self._require_token()
        async with self._mapped_errors("upload"):
            file = await self.client.files.async_create(
                io.BytesIO(content),
                metadata={"filename": filename},
                filename=filename,
                content_type=content_type,
            )
        return str(file.urls["get"])

    # --- models and trainings (LoRA) ----------------------------------------------------------------

    async def account_username(self) -> str:
        """The account the token belongs to: the owner of the models trainings push to."""
        self._require_token()
        async with self._mapped_errors("account"):
            account = await self.client.accounts.async_current()
        return str(account.username)

    async def latest_version(self, model: str) -> str:
        """The latest version id of "owner/name", looked up now (trainers publish new versions)."""
        async with self._mapped_errors("model"):
            found = await self.client.models.async_get(model)
        if found.latest_version is None:
            raise ProviderFailed(f"model {model} has no version")
        return str(found.latest_version.id)

    async def ensure_model(self, owner: str, name: str, hardware: str = "gpu-t4") -> str:
        """Create the (private) destination model for a training unless it exists; answers
        "owner/name". A refused create is fine when the model is there: the user trained before, or
        a concurrent training created it (Replicate's answer to a taken name is not relied on)."""
        self._require_token()
        try:
            async with self._mapped_errors("create model"):
                await self.client.models.async_create(
                    owner=owner, name=name, visibility="private", hardware=hardware
                )
        except ProviderRejected as refused:
            if not await self._model_exists(f"{owner}/{name}"):
                raise refused from None
        return f"{owner}/{name}"

    async def _model_exists(self, model: str) -> bool:
        try:
            async with self._mapped_errors("model"):
                await self.client.models.async_get(model)
        except ProviderRejected:
            return False
        return True

    async def create_training(
        self, trainer: str, version: str, destination: str, input: dict[str, Any], webhook: str | None = None
    ) -> str:
        self._require_token()
        params: dict[str, Any] = {"destination": destination}
        if webhook:
            params["webhook"] = webhook
            params["webhook_events_filter"] = ["completed"]
        async with self._mapped_errors("create training"):
            training = await self.client.trainings.async_create(
                model=trainer, version=version, input=input, **params
            )
        return str(training.id)

    async def find_training(
        self, version: str, input: dict[str, Any], since: float, taken: Callable[[str], Awaitable[bool]]
    ) -> str | None:
        """The newest training of the trainer `version` with exactly this input, created after `since`
        and not `taken` by another generation: like find_prediction, for a training whose create
        answer was lost. The input names the uploaded archive, so it tells one user's training from
        another's."""
        async with self._mapped_errors("list trainings"):
            page = await self.client.trainings.async_list()
            for _ in range(5):
                for training in page.results:
                    created = _epoch(training.created_at)
                    if created is not None and created < since:
                        return None  # newest first: everything after is older still
                    trained_from = (
                        training.version if isinstance(training.version, str) else training.version.id
                    )
                    if trained_from == version and training.input == input and not await taken(training.id):
                        return str(training.id)
                if not page.next:
                    return None
                page = await self.client.trainings.async_list(page.next)
        return None

    async def get_training(self, training_id: str) -> PredictionState:
        async with self._mapped_errors("get training"):
            training = await self.client.trainings.async_get(training_id)
        return PredictionState(
            id=training.id, status=training.status, output=training.output, error=_error_text(training.error)
        )

    async def cancel_training(self, training_id: str) -> None:
        async with self._mapped_errors("cancel training"):
            await self.client.trainings.async_cancel(training_id)

    async def download(self, url: str) -> bytes:
        content = await self.download_at_most(url, None)
        assert content is not None
        return content

    async def download_at_most(self, url: str, max_bytes: int | None) -> bytes | None:
        """An output's bytes; None when it is larger than `max_bytes` (stopped as soon as that shows,
        so a large video is never held in memory just to learn it is too large)."""
        with metrics.provider_call(self.name, "download"):
            return await self._download_at_most(url, max_bytes)

    async def _download_at_most(self, url: str, max_bytes: int | None) -> bytes | None:
        try:
            async with self._downloads.stream("GET", url) as response:
                if response.status_code >= 500 or response.status_code == 429:
                    raise ProviderUnavailable(f"downloading an output answered {response.status_code}")
                if response.status_code >= 400:
                    raise ProviderFailed(f"an output is gone ({response.status_code})")
                declared = response.headers.get("Content-Length")
                if max_bytes is not None and declared is not None and int(declared) > max_bytes:
                    return None
                content = bytearray()
                async for chunk in response.aiter_bytes():
                    content += chunk
                    if max_bytes is not None and len(content) > max_bytes:
                        return None
                return bytes(content)
        except httpx.HTTPError as error:
            raise ProviderUnavailable(f"downloading an output failed: {type(error).__name__}") from None

    async def close(self) -> None:
        await self._downloads.aclose()
        await self._api_transport.aclose()

    def _require_token(self) -> None:
        if not self._api_token:
            raise ProviderMisconfigured("REPLICATE_API_TOKEN is not set")

    @asynccontextmanager
    async def _mapped_errors(self, action: str) -> AsyncIterator[None]:
        """Bound the call in time and turn the SDK's and httpx's exceptions into typed errors.

        The SDK sends creates with no timeout at all (httpx's `timeout=None` per request), so a
        provider that accepts the connection and never answers would hold the caller forever. Every
        call is counted and timed here (metrics.py), with the typed error it ended in."""
        with metrics.provider_call(self.name, action):
            try:
                async with asyncio.timeout(self.timeout):
                    yield
            except StepError:
                raise
            except ReplicateError as error:
                retry_after = self._retry_after.pop(id(asyncio.current_task()), None)
                raise map_replicate_error(error, action, retry_after) from None
            except (TimeoutError, httpx.TimeoutException, httpx.TransportError) as error:
                raise ProviderUnavailable(f"replicate {action}: {type(error).__name__}") from None
            finally:
                self._retry_after.pop(id(asyncio.current_task()), None)


def map_replicate_error(error: ReplicateError, action: str, retry_after: float | None = None) -> StepError:
    status = error.status or 0
    detail = f"replicate {action} answered {status}: {error.title or ''} {error.detail or ''}".strip()
    if status == 429:
        return ProviderRateLimited(detail, retry_after=retry_after)
    if status in (401, 403):
        return ProviderMisconfigured(detail)
    if status == 402:
        return ProviderQuotaExceeded(detail)
    if status in (400, 404, 409, 413, 422):
        return ProviderRejected(detail)
    return ProviderUnavailable(detail, retry_after=retry_after)


def verify_webhook(headers: dict[str, str], body: str, secret: str, tolerance: int = 300) -> bool:
    """Replicate signs callbacks per Standard Webhooks; answers whether this one is genuine and fresh."""
    from replicate.webhook import Webhooks, WebhookSigningSecret

    try:
        Webhooks.validate(
            headers=headers, body=body, secret=WebhookSigningSecret(key=secret), tolerance=tolerance
        )
    except Exception:
        return False
    return True


def _parse_retry_after(headers: httpx.Headers) -> float:
    raw = (headers.get("Retry-After") or "").strip()
    try:
        return max(0.0, float(raw))
    except ValueError:
        return 1.0


def _epoch(timestamp: str | None) -> float | None:
    if not timestamp:
        return None
    try:
        return datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _state_of(prediction: Any) -> PredictionState:
    """The SDK's Prediction as this module answers it."""
    return PredictionState(
        id=str(prediction.id),
        status=prediction.status,
        output=prediction.output,
        error=_error_text(prediction.error),
    )


def _error_text(error: Any) -> str | None:
    if error is None:
        return None
    return str(error)[:500]
