"""A fake Replicate HTTP API on loopback for tests.

The real SDK talks to it unchanged::

    fake = FakeReplicate()
    await fake.start()
    client = replicate.Client(api_token=fake.token, base_url=fake.url)

The wire format follows what the replicate 1.x SDK sends and parses (prediction.py, model.py,
version.py, training.py, file.py, webhook.py, exceptions.py): JSON objects for resources,
RFC 7807 problem JSON for errors, Standard Webhooks signatures for webhooks.

Lifecycle of a prediction (and of a training, the same way):

* create answers 201 with status "starting"; with ``Prefer: wait`` (or ``wait=N``) a prediction
  whose outcome finishes at once (``polls == 0``, no ``hold``) is answered already finished, as
  Replicate answers one that ends within the wait. One with polls left or a hold is taken to outlast
  any wait: answered at once, "starting" (the fake does not hold the answer for the wait's seconds);
* every GET advances it per its :class:`Outcome`: while ``hold`` is set and not yet released, or
  while ``polls`` GETs remain, it answers "processing"; then it reaches the terminal state;
* a prediction created with a ``webhook`` whose outcome has ``polls == 0`` (or a ``hold``) is also
  advanced by a background task (right away, or as soon as the hold is released), so a webhook-only
  client sees it finish without polling;
* webhooks: "start" is sent on create and "completed" on reaching a terminal state, each only if
  ``webhook_events_filter`` asks for it (no filter = all events). "output" and "logs" events are
  never sent.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import hashlib
import hmac
import json
import secrets
import struct
import time
import zlib
from collections.abc import Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import aiohttp
from aiohttp import web

__all__ = ["TRAINER_MODEL", "FakeReplicate", "HttpError", "Outcome"]

JSON = dict[str, Any]

TERMINAL = frozenset({"succeeded", "failed", "canceled"})
WEBHOOK_EVENTS = frozenset({"start", "output", "logs", "completed"})
TRAINER_MODEL = "ostris/flux-dev-lora-trainer"
DEFAULT_WEBHOOK_SECRET = "whsec_" + base64.b64encode(bytes(range(24))).decode("ascii")
_ID_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # lowercase Crockford base32, like Replicate ids
_WEIGHTS_BYTES = b"fake-lora-weights\x00" * 4


@dataclass
class Outcome:
    """How one scripted prediction or training ends."""

    status: Literal["succeeded", "failed", "canceled"] = "succeeded"
    output: Any = None  # None -> default output
    error: str | None = None  # for failed
    polls: int = 0  # GETs answering "processing" before the terminal state
    hold: asyncio.Event | None = None  # stays "processing" until the event is set


@dataclass
class HttpError:
    """An error answered on create as RFC 7807 problem JSON."""

    status: int
    title: str
    detail: str
    retry_after: int | None = None


@dataclass
class _Job:
    kind: Literal["prediction", "training"]
    obj: JSON
    outcome: Outcome
    polls_left: int
    webhook: str | None
    events: frozenset[str]
    destination: str | None = None
    started_mono: float | None = None
    created_mono: float = field(default_factory=time.monotonic)


@dataclass
class _Delivery:
    url: str
    kind: str
    event: str
    obj_id: str
    body: str
    webhook_id: str
    redelivery: bool = False


def _asks_to_wait(prefer: str | None) -> bool:
    """Whether a Prefer header asks to wait for the outcome: "wait" or "wait=N" (N from 1 to 60)."""
    for preference in (prefer or "").split(","):
        name, _, value = preference.strip().partition("=")
        if name.strip().lower() == "wait" and (not value or value.strip().isdigit()):
            return True
    return False


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _new_id() -> str:
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(26))


def _new_hash() -> str:
    return secrets.token_hex(32)


def _problem(status: int, title: str, detail: str, headers: dict[str, str] | None = None) -> web.Response:
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail}
    return web.Response(
        status=status,
        text=json.dumps(body),
        content_type="application/problem+json",
        headers=headers,
    )


def _http_error_response(err: HttpError) -> web.Response:
    headers = {"Retry-After": str(err.retry_after)} if err.retry_after is not None else None
    return _problem(err.status, err.title, err.detail, headers)


def _not_found(detail: str = "Not found.") -> web.Response:
    return _problem(404, "Not found", detail)


def _png(index: int) -> bytes:
    """A valid 1x1 RGB PNG whose pixel and tEXt chunk depend on ``index``."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    rgb = bytes(((index * 37 + 11) % 256, (index * 91 + 23) % 256, (index * 53 + 57) % 256))
    ihdr = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" + rgb)
    text = b"Comment\x00fake-replicate output " + str(index).encode("ascii")
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"tEXt", text)
        + chunk(b"IDAT", idat)
        + chunk(b"IEND", b"")
    )


class FakeReplicate:
    """A fake Replicate API server on 127.0.0.1 (free port)."""

    def __init__(
        self,
        token: str = "r8_test_token",  # noqa: S107
        webhook_secret: str = DEFAULT_WEBHOOK_SECRET,
    ) -> None:
        self.token = token
        self.webhook_secret = webhook_secret
        self.url = ""
        self.page_size = 100
        self.default_outcome = Outcome()
        self.webhook_timeout = 5.0

        self.creates: list[JSON] = []
        self.predictions: dict[str, JSON] = {}
        self.cancels: list[str] = []
        self.polls: list[str] = []  # the prediction of every GET of one, in order
        self.downloads: list[str] = []
        # Chaos: while set and not yet fired, an accepted create (the prediction exists) is answered
        # only when the event fires, and output downloads wait likewise: a client killed meanwhile
        # never hears of them. `download_started` fires when a held download arrives.
        self.hold_create_answers: asyncio.Event | None = None
        self.hold_downloads: asyncio.Event | None = None
        self.download_started = asyncio.Event()
        self.webhooks_sent: list[JSON] = []
        self.models: dict[str, JSON] = {}
        self.versions: dict[str, dict[str, JSON]] = {}  # "owner/name" -> version id -> version
        self.model_creates: list[JSON] = []
        self.trainings: dict[str, JSON] = {}
        self.training_creates: list[JSON] = []
        self.training_cancels: list[str] = []
        self.files: dict[str, bytes] = {}
        self.file_objects: dict[str, JSON] = {}
        # GET /v1/account: the account the token belongs to (owner of models it creates).
        self.account: JSON = {
            "type": "user",
            "username": "aibot-owner",
            "name": "Aibot Owner",
            "github_url": None,
        }

        self._scripts: dict[str, collections.deque[Outcome | HttpError]] = {}
        self._training_script: collections.deque[Outcome | HttpError] = collections.deque()
        self._fail_all: HttpError | None = None
        self._jobs: dict[str, _Job] = {}
        self._png_cache: dict[int, bytes] = {}
        self._create_cond = asyncio.Condition()
        self._webhook_cond = asyncio.Condition()
        self._deliveries: asyncio.Queue[_Delivery] = asyncio.Queue()
        self._last_delivery: _Delivery | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

        self.trainer_version = hashlib.sha256(TRAINER_MODEL.encode()).hexdigest()
        self.add_model(TRAINER_MODEL, self.trainer_version)

    # ----------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        r = app.router
        r.add_post("/v1/models/{owner}/{name}/predictions", self._create_model_prediction)
        r.add_post("/v1/predictions", self._create_version_prediction)
        r.add_get("/v1/predictions", self._list_predictions)
        r.add_get("/v1/predictions/{id}", self._get_prediction)
        r.add_post("/v1/predictions/{id}/cancel", self._cancel_prediction)
        r.add_get("/v1/webhooks/default/secret", self._webhook_secret)
        r.add_get("/v1/account", self._get_account)
        r.add_post("/v1/models", self._create_model)
        r.add_get("/v1/models/{owner}/{name}", self._get_model)
        r.add_get("/v1/models/{owner}/{name}/versions", self._list_versions)
        r.add_get("/v1/models/{owner}/{name}/versions/{version}", self._get_version)
        r.add_post("/v1/models/{owner}/{name}/versions/{version}/trainings", self._create_training)
        r.add_get("/v1/trainings", self._list_trainings)
        r.add_get("/v1/trainings/{id}", self._get_training)
        r.add_post("/v1/trainings/{id}/cancel", self._cancel_training)
        r.add_post("/v1/files", self._create_file)
        r.add_get("/v1/files", self._list_files)
        r.add_get("/v1/files/{id}", self._get_file)
        r.add_delete("/v1/files/{id}", self._delete_file)
        r.add_get("/v1/files/{id}/download", self._download_file)
        r.add_get("/delivery/{key}/{filename}", self._delivery)

        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        self._session = aiohttp.ClientSession()
        self._spawn(self._webhook_worker())

    async def stop(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeReplicate:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ----------------------------------------------------------------- scripting API

    def script(self, model_or_version: str, *outcomes: Outcome | HttpError) -> None:
        """Queue outcomes for the next creates of a model ("owner/name") or a version id."""
        self._scripts.setdefault(model_or_version, collections.deque()).extend(outcomes)

    def script_training(self, *outcomes: Outcome | HttpError) -> None:
        """Queue outcomes for the next training creates (any model)."""
        self._training_script.extend(outcomes)

    def fail_all_creates(self, error: HttpError | None) -> None:
        """Every prediction and training create answers ``error`` until reset with None."""
        self._fail_all = error

    def add_model(self, owner_name: str, version_id: str | None = None) -> JSON:
        """Register a model (public, like an existing one); add ``version_id`` as its latest version."""
        owner, name = owner_name.split("/", 1)
        model = self.models.get(owner_name)
        if model is None:
            model = self._model_json(owner, name, "public", None)
            self.models[owner_name] = model
            self.versions[owner_name] = {}
        if version_id is not None:
            self._add_version(owner_name, version_id)
        return model

    def png_bytes(self, index: int) -> bytes:
        """The exact bytes served for output image ``index``."""
        if index not in self._png_cache:
            self._png_cache[index] = _png(index)
        return self._png_cache[index]

    def output_url(self, index: int, key: str = "scripted", ext: str = "png") -> str:
        """A delivery URL served by the fake (bytes ``png_bytes(index)``), for scripted outputs."""
        return f"{self.url}/delivery/{key}/out-{index}.{ext}"

    def create_count(self, model_or_version: str | None = None) -> int:
        """Accepted (2xx) prediction creates, optionally of one model or version."""
        return sum(
            1
            for c in self.creates
            if 200 <= c["status_answered"] < 300
            and (model_or_version is None or model_or_version in self._create_keys(c))
        )

    async def wait_for_create(self, count: int = 1, timeout: float = 10.0) -> None:
        """Wait until at least ``count`` prediction creates were accepted."""
        async with asyncio.timeout(timeout), self._create_cond:
            await self._create_cond.wait_for(lambda: self.create_count() >= count)

    async def wait_for_webhooks(self, count: int = 1, timeout: float = 10.0) -> None:
        """Wait until at least ``count`` webhook deliveries were attempted (see ``webhooks_sent``)."""
        async with asyncio.timeout(timeout), self._webhook_cond:
            await self._webhook_cond.wait_for(lambda: len(self.webhooks_sent) >= count)

    async def redeliver_last_webhook(self) -> None:
        """Send the last webhook again with the same webhook-id and body (fresh timestamp/signature)."""
        last = self._last_delivery
        if last is None:
            raise RuntimeError("no webhook was sent yet")
        await self._deliver(
            _Delivery(last.url, last.kind, last.event, last.obj_id, last.body, last.webhook_id, True)
        )

    def sign_webhook(self, webhook_id: str, timestamp: int, body: str) -> str:
        """The ``webhook-signature`` header value Replicate sends for this content."""
        key = base64.b64decode(self.webhook_secret.split("_", 1)[1])
        digest = hmac.new(key, f"{webhook_id}.{timestamp}.{body}".encode(), hashlib.sha256).digest()
        return "v1," + base64.b64encode(digest).decode("ascii")

    # ----------------------------------------------------------------- helpers

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _authorized(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        return header in (f"Bearer {self.token}", f"Token {self.token}")

    @staticmethod
    def _unauthenticated() -> web.Response:
        return _problem(401, "Unauthenticated", "You did not pass a valid authentication token")

    @staticmethod
    def _create_keys(c: JSON) -> set[str]:
        keys: set[str] = set()
        for k in ("model", "version"):
            value = c.get(k)
            if isinstance(value, str) and value:
                keys.add(value)
                if k == "version" and ":" in value:
                    keys.add(value.split(":", 1)[1])
        return keys

    def _model_json(self, owner: str, name: str, visibility: str, description: str | None) -> JSON:
        return {
            "url": f"https://replicate.com/{owner}/{name}",
            "owner": owner,
            "name": name,
            "description": description,
            "visibility": visibility,
            "github_url": None,
            "paper_url": None,
            "license_url": None,
            "run_count": 0,
            "cover_image_url": None,
            "default_example": None,
            "latest_version": None,
        }

    def _add_version(self, owner_name: str, version_id: str) -> JSON:
        version = {
            "id": version_id,
            "created_at": _now_iso(),
            "cog_version": "0.9.6",
            "openapi_schema": {},
        }
        self.versions[owner_name][version_id] = version
        self.models[owner_name]["latest_version"] = version
        return version

    def _model_of_version(self, version_id: str) -> str | None:
        for owner_name, versions in self.versions.items():
            if version_id in versions:
                return owner_name
        return None

    def _pop_outcome(self, keys: list[str]) -> Outcome | HttpError:
        for key in keys:
            queue = self._scripts.get(key)
            if queue:
                return queue.popleft()
        return self.default_outcome

    @staticmethod
    async def _json_body(request: web.Request) -> JSON | None:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return None
        return body if isinstance(body, dict) else None

    @staticmethod
    def _events_filter(body: JSON) -> tuple[frozenset[str] | None, str | None]:
        raw = body.get("webhook_events_filter")
        if raw is None:
            return WEBHOOK_EVENTS, None
        if not isinstance(raw, list) or not all(isinstance(e, str) for e in raw):
            return None, "- webhook_events_filter: must be a list of strings"
        unknown = sorted(set(raw) - WEBHOOK_EVENTS)
        if unknown:
            return None, f"- webhook_events_filter: unknown events {unknown}"
        return frozenset(raw), None

    def _page(self, request: web.Request, items: list[JSON], path: str) -> JSON:
        try:
            offset = max(0, int(request.query.get("cursor", "0")))
        except ValueError:
            offset = 0
        size = self.page_size
        results = items[offset : offset + size]
        nxt = f"{self.url}{path}?cursor={offset + size}" if offset + size < len(items) else None
        prev = f"{self.url}{path}?cursor={max(0, offset - size)}" if offset > 0 else None
        return {"previous": prev, "next": nxt, "results": results}

    # ----------------------------------------------------------------- predictions

    async def _create_model_prediction(self, request: web.Request) -> web.StreamResponse:
        owner, name = request.match_info["owner"], request.match_info["name"]
        model = f"{owner}/{name}"
        return await self._create_prediction(request, model=model, version=None, keys=[model])

    async def _create_version_prediction(self, request: web.Request) -> web.StreamResponse:
        return await self._create_prediction(request, model=None, version=None, keys=[])

    async def _create_prediction(
        self, request: web.Request, *, model: str | None, version: str | None, keys: list[str]
    ) -> web.StreamResponse:
        body = await self._json_body(request) if request.can_read_body else {}
        record: JSON = {
            "path": request.path,
            "model": model,
            "version": version,
            "input": None,
            "webhook": None,
            "webhook_events_filter": None,
            "prefer": request.headers.get("Prefer"),
            "id": None,
            "status_answered": 0,
        }
        if body is not None:
            record["input"] = body.get("input")
            record["webhook"] = body.get("webhook")
            record["webhook_events_filter"] = body.get("webhook_events_filter")

        async def answer(response: web.Response) -> web.Response:
            record["status_answered"] = response.status
            self.creates.append(record)
            if 200 <= response.status < 300:
                async with self._create_cond:
                    self._create_cond.notify_all()
                if self.hold_create_answers is not None:
                    await self.hold_create_answers.wait()
            return response

        if not self._authorized(request):
            return await answer(self._unauthenticated())
        if self._fail_all is not None:
            return await answer(_http_error_response(self._fail_all))
        if body is None:
            return await answer(_problem(400, "Bad request", "The request body is not a JSON object"))

        if model is None:  # POST /v1/predictions: the version comes in the body
            raw_version = body.get("version")
            if not isinstance(raw_version, str) or not raw_version:
                return await answer(
                    _problem(422, "Input validation failed", "- version: version is required")
                )
            record["version"] = raw_version
            if ":" in raw_version:
                model, version = raw_version.split(":", 1)
            else:
                version = raw_version
                model = self._model_of_version(version)
            record["model"] = model
            keys = [raw_version, version] + ([model] if model else [])

        inp = body.get("input", {})
        if not isinstance(inp, dict):
            return await answer(_problem(422, "Input validation failed", "- input: must be an object"))
        if "prompt" in inp and isinstance(inp["prompt"], str) and inp["prompt"] == "":
            return await answer(
                _problem(
                    422,
                    "Input validation failed",
                    "- input.prompt: String length must be greater than or equal to 1",
                )
            )
        events, err = self._events_filter(body)
        if events is None:
            return await answer(_problem(422, "Input validation failed", err or "bad filter"))
        webhook = body.get("webhook")
        if webhook is not None and not isinstance(webhook, str):
            return await answer(_problem(422, "Input validation failed", "- webhook: must be a URL"))

        scripted = self._pop_outcome(keys)
        if isinstance(scripted, HttpError):
            return await answer(_http_error_response(scripted))

        pid = _new_id()
        obj: JSON = {
            "id": pid,
            "model": model or "",
            "version": version if version is not None else "hidden",
            "input": inp,
            "logs": "",
            "output": None,
            "data_removed": False,
            "error": None,
            "source": "api",
            "status": "starting",
            "created_at": _now_iso(),
            "started_at": None,
            "completed_at": None,
            "urls": {
                "cancel": f"{self.url}/v1/predictions/{pid}/cancel",
                "get": f"{self.url}/v1/predictions/{pid}",
                "web": f"https://replicate.com/p/{pid}",
            },
        }
        if webhook:
            obj["webhook"] = webhook
            obj["webhook_events_filter"] = sorted(events)
        self.predictions[pid] = obj
        job = _Job("prediction", obj, scripted, scripted.polls, webhook, events)
        self._jobs[pid] = job
        record["id"] = pid
        self._after_create(job)
        if _asks_to_wait(request.headers.get("Prefer")) and scripted.hold is None and job.polls_left == 0:
            self._finish(job)
        response = web.json_response(obj, status=201)
        return await answer(response)

    def _after_create(self, job: _Job) -> None:
        """Send the start webhook and, for webhook creations, advance in the background."""
        if not job.webhook:
            return
        if "start" in job.events:
            self._enqueue_webhook(job, "start")
        hold = job.outcome.hold
        if hold is not None:

            async def release() -> None:
                self._set_processing(job)
                await hold.wait()
                self._finish(job)

            self._spawn(release())
        elif job.polls_left == 0:

            async def finish_soon() -> None:
                await asyncio.sleep(0)
                self._finish(job)

            self._spawn(finish_soon())

    def _advance(self, job: _Job) -> None:
        if job.obj["status"] in TERMINAL:
            return
        hold = job.outcome.hold
        held = hold is not None and not hold.is_set()
        if held or job.polls_left > 0:
            job.polls_left = max(0, job.polls_left - 1)
            self._set_processing(job)
            return
        self._finish(job)

    def _set_processing(self, job: _Job) -> None:
        obj = job.obj
        if obj["status"] in TERMINAL:
            return
        if obj["status"] == "starting":
            obj["status"] = "processing"
            obj["started_at"] = _now_iso()
            obj["logs"] = "Running predict()...\n" if job.kind == "prediction" else "Training...\n"
            job.started_mono = time.monotonic()

    def _finish(self, job: _Job, status: str | None = None) -> None:
        obj = job.obj
        if obj["status"] in TERMINAL:
            return
        outcome = job.outcome
        final = status or outcome.status
        now_mono = time.monotonic()
        if obj["started_at"] is None:
            obj["started_at"] = _now_iso()
            job.started_mono = now_mono
        started = job.started_mono if job.started_mono is not None else now_mono
        obj["status"] = final
        obj["completed_at"] = _now_iso()
        obj["metrics"] = {
            "predict_time": round(now_mono - started, 6),
            "total_time": round(now_mono - job.created_mono, 6),
        }
        if final == "succeeded":
            obj["output"] = outcome.output if outcome.output is not None else self._default_output(job)
            obj["logs"] = (obj["logs"] or "") + "Done.\n"
            if job.kind == "training":
                self._register_trained_version(job)
        elif final == "failed":
            obj["output"] = outcome.output
            obj["error"] = outcome.error or "Prediction failed for an unknown reason"
            obj["logs"] = (obj["logs"] or "") + f"Error: {obj['error']}\n"
        else:  # canceled
            obj["output"] = None
        if job.webhook and "completed" in job.events:
            self._enqueue_webhook(job, "completed")

    def _default_output(self, job: _Job) -> Any:
        oid = job.obj["id"]
        if job.kind == "training":
            destination = job.destination or ""
            return {
                "version": f"{destination}:{_new_hash()}",
                "weights": f"{self.url}/delivery/{oid}/trained_model.tar",
            }
        raw = (job.obj.get("input") or {}).get("num_outputs", 1)
        try:
            n = int(raw)
        except (TypeError, ValueError):
            n = 1
        return [f"{self.url}/delivery/{oid}/out-{i}.png" for i in range(max(n, 1))]

    def _register_trained_version(self, job: _Job) -> None:
        output = job.obj.get("output")
        if not isinstance(output, dict) or not isinstance(output.get("version"), str):
            return
        ref = output["version"]
        if ":" not in ref:
            return
        owner_name, version_id = ref.split(":", 1)
        if owner_name not in self.models:
            self.add_model(owner_name)
        self._add_version(owner_name, version_id)

    async def _get_prediction(self, request: web.Request) -> web.StreamResponse:
        if not self._authorized(request):
            return self._unauthenticated()
        pid = request.match_info["id"]
        job = self._jobs.get(pid)
        if job is None or job.kind != "prediction":
            return _not_found()
        self.polls.append(pid)
        self._advance(job)
        return web.json_response(job.obj)

    async def _cancel_prediction(self, request: web.Request) -> web.StreamResponse:
        if not self._authorized(request):
            return self._unauthenticated()
        pid = request.match_info["id"]
        job = self._jobs.get(pid)
        if job is None or job.kind != "prediction":
            return _not_found()
        self.cancels.append(pid)
        self._finish(job, "canceled")
        return web.json_response(job.obj)

    async def _list_predictions(self, request: web.Request) -> web.StreamResponse:
        if not self._authorized(request):
            return self._unauthenticated()
        items = list(reversed(self.predictions.values()))
        return web.json_response(self._page(request, items, "/v1/predictions"))

    # ----------------------------------------------------------------- webhooks

    def _enqueue_webhook(self, job: _Job, event: str) -> None:
        assert job.webhook is not None
        delivery = _Delivery(
            url=job.webhook,
            kind=job.kind,
            event=event,
            obj_id=job.obj["id"],
            body=json.dumps(job.obj),
            webhook_id="msg_" + secrets.token_urlsafe(20).replace("-", "x").replace("_", "y"),
        )
        self._deliveries.put_nowait(delivery)

    async def _webhook_worker(self) -> None:
        while True:
            delivery = await self._deliveries.get()
            await self._deliver(delivery)

    async def _deliver(self, d: _Delivery) -> None:
        timestamp = int(time.time())
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "Replicate-Webhooks/2.0",
            "webhook-id": d.webhook_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": self.sign_webhook(d.webhook_id, timestamp, d.body),
        }
        record: JSON = {
            "url": d.url,
            "kind": d.kind,
            "event": d.event,
            "id": d.obj_id,
            "status": json.loads(d.body)["status"],
            "webhook_id": d.webhook_id,
            "headers": headers,
            "body": d.body,
            "redelivery": d.redelivery,
            "response_status": None,
            "error": None,
        }
        try:
            if self._session is None:
                raise aiohttp.ClientError("FakeReplicate is not started")
            async with self._session.post(
                d.url,
                data=d.body.encode(),
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=self.webhook_timeout),
            ) as resp:
                await resp.read()
                record["response_status"] = resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            record["error"] = repr(exc)
        self._last_delivery = d
        self.webhooks_sent.append(record)
        async with self._webhook_cond:
            self._webhook_cond.notify_all()

    async def _webhook_secret(self, request: web.Request) -> web.StreamResponse:
        if not self._authorized(request):
            return self._unauthenticated()
        return web.json_response({"key": self.webhook_secret})

    # ----------------------------------------------------------------- account

    async def _get_account(self, request: web.Request) -> web.StreamResponse:
        if not self._authorized(request):
            return self._unauthenticated()
        return web.json_response(self.account)

    # ----------------------------------------------------------------- models

    async def _create_model(self, request: web.Request) -> web.StreamResponse:
        if not self._authorized(request):
            return self._unauthenticated()
        body = await self._json_body(request)
        if body is None:
            return _problem(400, "Bad request", "The request body is not a JSON object")
        self.model_creates.append(body)
        owner, name = body.get("owner"), body.get("name")
        visibility, hardware = body.get("visibility"), body.get("hardware")
        problems = []
        if not isinstance(owner, str) or not owner:
            problems.append("- owner: owner is required")
        if not isinstance(name, str) or not name:
            problems.append("- name: name is required")
        if visibility not in ("public", "private"):
            problems.append("- visibility: must be one of public, private")
        if not isinstance(hardware, str) or not hardware:
            problems.append("- hardware: hardware is required")
        if problems:
            return _problem(422, "Input validation failed", "\n".join(problems))
        assert isinstance(owner, str) and isinstance(name, str) and isinstance(visibility, str)
        key = f"{owner}/{name}"
        if key in self.models:
            return _problem(409, "Conflict", f"A model with the name {key} already exists")
        description = body.get("description")
        if not isinstance(description, str):
            description = None
        model = self._model_json(owner, name, visibility, description)
        self.models[key] = model
        self.versions[key] = {}
        return web.json_response(model, status=201)

    async def _get_model(self, request: web.Request) -> web.StreamResponse:
        if not self._authorized(request):
            return self._unauthenticated()
        key = f"{request.match_info['owner']}/{request.match_info['name']}"
        model = self.models.get(key)
        if model is None:
            return _not_found()
        return web.json_response(model)

    async def _list_versions(self, request: web.Request) -> web.StreamResponse:
        if not self._authorized(request):
            return self._unauthenticated()
        key = f"{request.match_info['owner']}/{request.match_info['name']}"
        if key not in self.models:
            return _not_found()
        items = list(reversed(self.versions[key].values()))
        return web.json_response(self._page(request, items, f"/v1/models/{key}/versions"))

    async def _get_version(self, request: web.Request) -> web.StreamResponse:
        if not self._authorized(request):
            return self._unauthenticated()
        key = f"{request.match_info['owner']}/{request.match_info['name']}"
        version = self.versions.get(key, {}).get(request.match_info["version"])
        if version is None:
            return _not_found()
        return web.json_response(version)

    # ----------------------------------------------------------------- trainings

    async def _create_training(self, request: web.Request) -> web.StreamResponse:
        owner, name = request.match_info["owner"], request.match_info["name"]
        version_id = request.match_info["version"]
        model = f"{owner}/{name}"
        body = await self._json_body(request) if request.can_read_body else {}
        record: JSON = {
            "path": request.path,
            "model": model,
            "version": version_id,
            "destination": None,
            "input": None,
            "webhook": None,
            "webhook_events_filter": None,
            "id": None,
            "status_answered": 0,
        }
        if body is not None:
            for k in ("destination", "input", "webhook", "webhook_events_filter"):
                record[k] = body.get(k)

        def answer(response: web.Response) -> web.Response:
            record["status_answered"] = response.status
            self.training_creates.append(record)
            return response

        if not self._authorized(request):
            return answer(self._unauthenticated())
        if self._fail_all is not None:
            return answer(_http_error_response(self._fail_all))
        if body is None:
            return answer(_problem(400, "Bad request", "The request body is not a JSON object"))
        if version_id not in self.versions.get(model, {}):
            return answer(_not_found(f"The version {model}:{version_id} does not exist"))
        destination = body.get("destination")
        if not isinstance(destination, str) or "/" not in destination:
            return answer(_problem(422, "Input validation failed", "- destination: must be owner/name"))
        if destination not in self.models:
            return answer(
                _problem(
                    404,
                    "Not found",
                    f"The specified training destination {destination} does not exist",
                )
            )
        inp = body.get("input", {})
        if not isinstance(inp, dict):
            return answer(_problem(422, "Input validation failed", "- input: must be an object"))
        events, err = self._events_filter(body)
        if events is None:
            return answer(_problem(422, "Input validation failed", err or "bad filter"))
        webhook = body.get("webhook")
        if webhook is not None and not isinstance(webhook, str):
            return answer(_problem(422, "Input validation failed", "- webhook: must be a URL"))

        scripted: Outcome | HttpError = (
            self._training_script.popleft() if self._training_script else self.default_outcome
        )
        if isinstance(scripted, HttpError):
            return answer(_http_error_response(scripted))

        tid = _new_id()
        obj: JSON = {
            "id": tid,
            "model": model,
            "version": version_id,
            "input": inp,
            "logs": "",
            "output": None,
            "error": None,
            "source": "api",
            "status": "starting",
            "created_at": _now_iso(),
            "started_at": None,
            "completed_at": None,
            "urls": {
                "cancel": f"{self.url}/v1/trainings/{tid}/cancel",
                "get": f"{self.url}/v1/trainings/{tid}",
                "web": f"https://replicate.com/p/{tid}",
            },
        }
        if webhook:
            obj["webhook"] = webhook
            obj["webhook_events_filter"] = sorted(events)
        self.trainings[tid] = obj
        job = _Job("training", obj, scripted, scripted.polls, webhook, events, destination=destination)
        self._jobs[tid] = job
        record["id"] = tid
        response = web.json_response(obj, status=201)
        self._after_create(job)
        return answer(response)

    async def _get_training(self, request: web.Request) -> web.StreamResponse:
        if not self._authorized(request):
            return self._unauthenticated()
        job = self._jobs.get(request.match_info["id"])
        if job is None or job.kind != "training":
            return _not_found()
        self._advance(job)
        return web.json_response(job.obj)

    async def _cancel_training(self, request: web.Request) -> web.StreamResponse:
        if not self._authorized(request):
            return self._unauthenticated()
        tid = request.match_info["id"]
        job = self._jobs.get(tid)
        if job is None or job.kind != "training":
            return _not_found()
        self.training_cancels.append(tid)
        self._finish(job, "canceled")
        return web.json_response(job.obj)

    async def _list_trainings(self, request: web.Request) -> web.StreamResponse:
        if not self._authorized(request):
            return self._unauthenticated()
        items = list(reversed(self.trainings.values()))
        return web.json_response(self._page(request, items, "/v1/trainings"))

    # ----------------------------------------------------------------- files

    async def _create_file(self, request: web.Request) -> web.StreamResponse:
        if not self._authorized(request):
            return self._unauthenticated()
        if not request.content_type.startswith("multipart/"):
            return _problem(400, "Bad request", "Expected a multipart/form-data body")
        content: bytes | None = None
        filename = "file"
        content_type = "application/octet-stream"
        metadata: Any = {}
        reader = await request.multipart()
        while True:
            part = await reader.next()
            if part is None:
                break
            if not isinstance(part, aiohttp.BodyPartReader):
                continue
            if part.name == "content":
                content = bytes(await part.read())
                filename = part.filename or filename
                content_type = part.headers.get("Content-Type", content_type)
            elif part.name == "metadata":
                try:
                    metadata = json.loads(await part.text())
                except json.JSONDecodeError:
                    return _problem(422, "Input validation failed", "- metadata: must be JSON")
        if content is None:
            return _problem(422, "Input validation failed", "- content: file content is required")
        fid = _new_id()
        now = datetime.now(UTC)
        expires = datetime.fromtimestamp(now.timestamp() + 24 * 3600, UTC)
        obj: JSON = {
            "id": fid,
            "name": filename,
            "content_type": content_type,
            "size": len(content),
            "etag": hashlib.md5(content, usedforsecurity=False).hexdigest(),
            "checksums": {
                "sha256": hashlib.sha256(content).hexdigest(),
                "md5": hashlib.md5(content, usedforsecurity=False).hexdigest(),
            },
            "metadata": metadata if isinstance(metadata, dict) else {},
            "created_at": now.isoformat(timespec="microseconds").replace("+00:00", "Z"),
            "expires_at": expires.isoformat(timespec="microseconds").replace("+00:00", "Z"),
            "urls": {"get": f"{self.url}/v1/files/{fid}"},
        }
        self.files[fid] = content
        self.file_objects[fid] = obj
        return web.json_response(obj, status=201)

    async def _get_file(self, request: web.Request) -> web.StreamResponse:
        if not self._authorized(request):
            return self._unauthenticated()
        obj = self.file_objects.get(request.match_info["id"])
        if obj is None:
            return _not_found()
        return web.json_response(obj)

    async def _list_files(self, request: web.Request) -> web.StreamResponse:
        if not self._authorized(request):
            return self._unauthenticated()
        items = list(reversed(self.file_objects.values()))
        return web.json_response(self._page(request, items, "/v1/files"))

    async def _delete_file(self, request: web.Request) -> web.StreamResponse:
        if not self._authorized(request):
            return self._unauthenticated()
        fid = request.match_info["id"]
        if fid not in self.file_objects:
            return _not_found()
        del self.file_objects[fid]
        del self.files[fid]
        return web.Response(status=204)

    async def _download_file(self, request: web.Request) -> web.StreamResponse:
        if not self._authorized(request):
            return self._unauthenticated()
        fid = request.match_info["id"]
        obj = self.file_objects.get(fid)
        if obj is None:
            return _not_found()
        self.downloads.append(request.path)
        return web.Response(body=self.files[fid], content_type=obj["content_type"])

    # ----------------------------------------------------------------- delivery (no auth)

    async def _delivery(self, request: web.Request) -> web.StreamResponse:
        filename = request.match_info["filename"]
        if filename == "trained_model.tar":
            self.downloads.append(request.path)
            return web.Response(body=_WEIGHTS_BYTES, content_type="application/x-tar")
        stem, _, ext = filename.partition(".")
        if not stem.startswith("out-") or not stem[4:].isdigit():
            return web.Response(status=404, text="Not Found")
        if self.hold_downloads is not None:
            self.download_started.set()
            await self.hold_downloads.wait()
        self.downloads.append(request.path)
        content_type = {"png": "image/png", "webp": "image/webp", "jpg": "image/jpeg"}.get(
            ext, "application/octet-stream"
        )
        return web.Response(body=self.png_bytes(int(stem[4:])), content_type=content_type)
