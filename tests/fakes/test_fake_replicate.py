"""Self-tests of the fake Replicate API, driven through the real replicate SDK."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from aiohttp import web
from replicate.client import Client
from replicate.exceptions import ReplicateError
from replicate.webhook import InvalidSignatureError, Webhooks, WebhookSigningSecret

from tests.fakes.replicate import TRAINER_MODEL, FakeReplicate, HttpError, Outcome

FLUX = "black-forest-labs/flux-schnell"
TERMINAL = {"succeeded", "failed", "canceled"}


@pytest.fixture
async def fake() -> AsyncIterator[FakeReplicate]:
    server = FakeReplicate()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def client(fake: FakeReplicate) -> AsyncIterator[Client]:
    c = Client(api_token=fake.token, base_url=fake.url)
    yield c
    await c._async_client.aclose()


@pytest.fixture
async def http(fake: FakeReplicate) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=fake.url) as c:
        yield c


class Receiver:
    """A tiny webhook receiver on loopback."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[dict[str, str], str]] = asyncio.Queue()
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        await self.queue.put((dict(request.headers), await request.text()))
        return web.Response(status=200)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}/hook"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def next(self) -> tuple[dict[str, str], str]:
        return await asyncio.wait_for(self.queue.get(), timeout=10)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    await r.start()
    try:
        yield r
    finally:
        await r.stop()


async def poll_statuses(client: Client, prediction_id: str, limit: int = 20) -> list[Any]:
    """GET the prediction until it is terminal; return every answer."""
    answers = []
    for _ in range(limit):
        p = await client.predictions.async_get(prediction_id)
        answers.append(p)
        if p.status in TERMINAL:
            return answers
    raise AssertionError(f"not terminal after {limit} GETs: {[a.status for a in answers]}")


async def test_create_by_model_polls_and_serves_pngs(
    fake: FakeReplicate, client: Client, http: httpx.AsyncClient
) -> None:
    fake.script(FLUX, Outcome(polls=2))
    created = await client.models.predictions.async_create(
        model=FLUX, input={"prompt": "a cat", "num_outputs": 3}
    )
    assert created.status == "starting"
    assert created.model == FLUX
    assert created.version == "hidden"
    assert re.fullmatch(r"[0-9a-z]{26}", created.id)
    assert created.output is None and created.error is None
    assert created.created_at is not None and created.created_at.endswith("Z")
    assert created.urls is not None
    assert created.urls["get"] == f"{fake.url}/v1/predictions/{created.id}"
    assert created.urls["cancel"] == f"{fake.url}/v1/predictions/{created.id}/cancel"

    answers = await poll_statuses(client, created.id)
    assert [a.status for a in answers] == ["processing", "processing", "succeeded"]
    done = answers[-1]
    assert done.started_at and done.completed_at
    assert done.metrics is not None and "predict_time" in done.metrics
    assert done.output == [f"{fake.url}/delivery/{created.id}/out-{i}.png" for i in range(3)]

    bodies = [(await http.get(url)).content for url in done.output]
    assert bodies == [fake.png_bytes(i) for i in range(3)]
    assert all(b.startswith(b"\x89PNG\r\n\x1a\n") for b in bodies)
    assert len(set(bodies)) == 3
    assert fake.downloads == [f"/delivery/{created.id}/out-{i}.png" for i in range(3)]

    assert fake.create_count() == 1 and fake.create_count(FLUX) == 1
    assert fake.creates[0]["path"] == f"/v1/models/{FLUX}/predictions"
    assert fake.creates[0]["input"] == {"prompt": "a cat", "num_outputs": 3}
    assert fake.creates[0]["status_answered"] == 201
    assert fake.predictions[created.id]["status"] == "succeeded"


async def test_default_outcome_is_terminal_on_first_get(fake: FakeReplicate, client: Client) -> None:
    created = await client.predictions.async_create(model=FLUX, input={"prompt": "x"})
    answers = await poll_statuses(client, created.id)
    assert [a.status for a in answers] == ["succeeded"]
    assert answers[0].output == [f"{fake.url}/delivery/{created.id}/out-0.png"]


async def test_prefer_wait_answers_a_quick_prediction_finished(fake: FakeReplicate, client: Client) -> None:
    quick = await client.models.predictions.async_create(model=FLUX, input={"prompt": "x"}, wait=5)
    assert quick.status == "succeeded"
    assert quick.output == [f"{fake.url}/delivery/{quick.id}/out-0.png"]
    assert fake.creates[-1]["prefer"] == "wait=5"
    # One that takes polls, or is held, outlasts the wait: answered at once, still starting.
    hold = asyncio.Event()
    fake.script(FLUX, Outcome(polls=1), Outcome(hold=hold))
    slow = await client.models.predictions.async_create(model=FLUX, input={"prompt": "y"}, wait=5)
    held = await client.models.predictions.async_create(model=FLUX, input={"prompt": "z"}, wait=True)
    assert (slow.status, held.status) == ("starting", "starting")
    assert fake.creates[-1]["prefer"] == "wait"
    # Without the header nothing waits: the default outcome is "starting" until a GET.
    plain = await client.models.predictions.async_create(model=FLUX, input={"prompt": "w"})
    assert plain.status == "starting"
    assert fake.polls == []
    assert [a.status for a in await poll_statuses(client, plain.id)] == ["succeeded"]
    assert fake.polls == [plain.id]


async def test_create_by_version(fake: FakeReplicate, client: Client) -> None:
    version = "a" * 64
    fake.add_model("acme/sdxl", version)
    fake.script(version, Outcome(polls=1), Outcome(status="failed", error="boom"))

    full = await client.predictions.async_create(version=f"acme/sdxl:{version}", input={"prompt": "p"})
    assert (full.model, full.version, full.status) == ("acme/sdxl", version, "starting")
    bare = await client.predictions.async_create(version, input={"prompt": "q"})
    assert (bare.model, bare.version) == ("acme/sdxl", version)

    assert [a.status for a in await poll_statuses(client, full.id)] == ["processing", "succeeded"]
    assert [a.status for a in await poll_statuses(client, bare.id)] == ["failed"]

    assert fake.creates[0]["path"] == "/v1/predictions"
    assert fake.create_count(version) == 2
    assert fake.create_count("acme/sdxl") == 2
    assert fake.create_count(FLUX) == 0


async def test_single_url_output(fake: FakeReplicate, client: Client, http: httpx.AsyncClient) -> None:
    url = fake.output_url(7)
    fake.script(FLUX, Outcome(output=url))
    created = await client.predictions.async_create(model=FLUX, input={"prompt": "one"})
    (done,) = await poll_statuses(client, created.id)
    assert done.output == url
    assert (await http.get(done.output)).content == fake.png_bytes(7)


async def test_failed_outcome_shows_error(fake: FakeReplicate, client: Client) -> None:
    fake.script(FLUX, Outcome(status="failed", error="NSFW content detected", polls=1))
    created = await client.predictions.async_create(model=FLUX, input={"prompt": "x"})
    answers = await poll_statuses(client, created.id)
    assert [a.status for a in answers] == ["processing", "failed"]
    assert answers[-1].error == "NSFW content detected"
    assert answers[-1].output is None


async def test_empty_prompt_is_422(fake: FakeReplicate, client: Client) -> None:
    with pytest.raises(ReplicateError) as info:
        await client.predictions.async_create(model=FLUX, input={"prompt": ""})
    assert info.value.status == 422
    assert info.value.title == "Input validation failed"
    assert info.value.detail == "- input.prompt: String length must be greater than or equal to 1"
    assert fake.creates[-1]["status_answered"] == 422
    assert fake.create_count() == 0


async def test_rate_limit_429_with_retry_after(
    fake: FakeReplicate, client: Client, http: httpx.AsyncClient
) -> None:
    fake.fail_all_creates(HttpError(429, "Request was throttled.", "Expected available in 7 seconds.", 7))
    resp = await http.post(
        f"/v1/models/{FLUX}/predictions",
        json={"input": {"prompt": "x"}},
        headers={"Authorization": f"Bearer {fake.token}"},
    )
    assert resp.status_code == 429
    assert resp.headers["Retry-After"] == "7"
    assert resp.json() == {
        "type": "about:blank",
        "title": "Request was throttled.",
        "status": 429,
        "detail": "Expected available in 7 seconds.",
    }

    with pytest.raises(ReplicateError) as info:
        await client.predictions.async_create(model=FLUX, input={"prompt": "x"})
    assert info.value.status == 429
    assert info.value.detail == "Expected available in 7 seconds."

    fake.fail_all_creates(None)
    await client.predictions.async_create(model=FLUX, input={"prompt": "x"})
    assert fake.create_count() == 1
    assert [c["status_answered"] for c in fake.creates] == [429, 429, 201]


async def test_scripted_http_error_then_outcome(fake: FakeReplicate, client: Client) -> None:
    fake.script(FLUX, HttpError(503, "Service Unavailable", "try later"), Outcome(status="canceled"))
    with pytest.raises(ReplicateError) as info:
        await client.predictions.async_create(model=FLUX, input={"prompt": "x"})
    assert info.value.status == 503
    created = await client.predictions.async_create(model=FLUX, input={"prompt": "x"})
    assert [a.status for a in await poll_statuses(client, created.id)] == ["canceled"]


async def test_wrong_token_is_401(fake: FakeReplicate) -> None:
    bad = Client(api_token="r8_wrong", base_url=fake.url)
    try:
        with pytest.raises(ReplicateError) as info:
            await bad.predictions.async_create(model=FLUX, input={"prompt": "x"})
        assert info.value.status == 401
        assert info.value.title == "Unauthenticated"
        assert info.value.detail == "You did not pass a valid authentication token"
        with pytest.raises(ReplicateError) as info2:
            await bad.predictions.async_get("whatever")
        assert info2.value.status == 401
    finally:
        await bad._async_client.aclose()
    assert fake.create_count() == 0
    assert fake.creates[0]["status_answered"] == 401


async def test_unknown_prediction_is_404(client: Client) -> None:
    with pytest.raises(ReplicateError) as info:
        await client.predictions.async_get("doesnotexist")
    assert info.value.status == 404


async def test_cancel_held_prediction(fake: FakeReplicate, client: Client) -> None:
    hold = asyncio.Event()
    fake.script(FLUX, Outcome(hold=hold))
    created = await client.predictions.async_create(model=FLUX, input={"prompt": "slow"})
    for _ in range(3):
        assert (await client.predictions.async_get(created.id)).status == "processing"

    await created.async_cancel()
    assert created.status == "canceled"
    assert fake.cancels == [created.id]

    hold.set()
    after = await client.predictions.async_get(created.id)
    assert after.status == "canceled"
    assert after.output is None and after.completed_at is not None


async def test_hold_released_then_succeeds(fake: FakeReplicate, client: Client) -> None:
    hold = asyncio.Event()
    fake.script(FLUX, Outcome(hold=hold))
    created = await client.predictions.async_create(model=FLUX, input={"prompt": "slow"})
    assert (await client.predictions.async_get(created.id)).status == "processing"
    hold.set()
    assert (await client.predictions.async_get(created.id)).status == "succeeded"


async def test_webhook_completed_is_signed_and_validates(
    fake: FakeReplicate, client: Client, receiver: Receiver
) -> None:
    created = await client.predictions.async_create(
        model=FLUX,
        input={"prompt": "hooked", "num_outputs": 2},
        webhook=receiver.url,
        webhook_events_filter=["completed"],
    )
    assert fake.creates[0]["webhook"] == receiver.url
    assert fake.creates[0]["webhook_events_filter"] == ["completed"]

    headers, body = await receiver.next()
    payload = json.loads(body)
    assert payload["id"] == created.id
    assert payload["status"] == "succeeded"
    assert payload["output"] == [f"{fake.url}/delivery/{created.id}/out-{i}.png" for i in range(2)]
    assert headers["webhook-id"].startswith("msg_")
    assert headers["webhook-timestamp"].isdigit()
    assert headers["webhook-signature"].startswith("v1,")

    secret = await client.webhooks.default.async_secret()
    assert secret.key == fake.webhook_secret
    Webhooks.validate(headers=headers, body=body, secret=secret, tolerance=300)

    tampered = body.replace("succeeded", "failed")
    with pytest.raises(InvalidSignatureError):
        Webhooks.validate(headers=headers, body=tampered, secret=secret)
    wrong = WebhookSigningSecret(key="whsec_" + "QUJD" * 8)
    with pytest.raises(InvalidSignatureError):
        Webhooks.validate(headers=headers, body=body, secret=wrong)

    await fake.wait_for_webhooks(1)
    assert [(w["event"], w["status"], w["response_status"]) for w in fake.webhooks_sent] == [
        ("completed", "succeeded", 200)
    ]
    assert receiver.queue.empty()

    await fake.redeliver_last_webhook()
    headers2, body2 = await receiver.next()
    assert headers2["webhook-id"] == headers["webhook-id"]
    assert body2 == body
    Webhooks.validate(headers=headers2, body=body2, secret=secret)
    assert fake.webhooks_sent[-1]["redelivery"] is True


async def test_webhook_without_filter_sends_start_then_completed_on_hold_release(
    fake: FakeReplicate, client: Client, receiver: Receiver
) -> None:
    hold = asyncio.Event()
    fake.script(FLUX, Outcome(hold=hold))
    created = await client.predictions.async_create(model=FLUX, input={"prompt": "x"}, webhook=receiver.url)
    _, start_body = await receiver.next()
    assert json.loads(start_body)["status"] == "starting"
    assert receiver.queue.empty()

    hold.set()  # no GET: the fake advances webhook predictions on its own
    headers, body = await receiver.next()
    assert json.loads(body)["status"] == "succeeded"
    secret = WebhookSigningSecret(key=fake.webhook_secret)
    Webhooks.validate(headers=headers, body=body, secret=secret)
    assert fake.predictions[created.id]["status"] == "succeeded"
    assert [w["event"] for w in fake.webhooks_sent] == ["start", "completed"]


async def test_webhook_on_failure_and_cancel(fake: FakeReplicate, client: Client, receiver: Receiver) -> None:
    fake.script(FLUX, Outcome(status="failed", error="oom"), Outcome(hold=asyncio.Event()))
    await client.predictions.async_create(
        model=FLUX, input={"prompt": "x"}, webhook=receiver.url, webhook_events_filter=["completed"]
    )
    _, body = await receiver.next()
    assert (json.loads(body)["status"], json.loads(body)["error"]) == ("failed", "oom")

    held = await client.predictions.async_create(
        model=FLUX, input={"prompt": "y"}, webhook=receiver.url, webhook_events_filter=["completed"]
    )
    await client.predictions.async_cancel(held.id)
    _, body = await receiver.next()
    assert json.loads(body)["status"] == "canceled"


async def test_wait_for_create(fake: FakeReplicate, client: Client) -> None:
    waiter = asyncio.create_task(fake.wait_for_create(2, timeout=5))
    await client.predictions.async_create(model=FLUX, input={"prompt": "a"})
    assert not waiter.done()
    await client.predictions.async_create(model=FLUX, input={"prompt": "b"})
    await waiter
    with pytest.raises(TimeoutError):
        await fake.wait_for_create(3, timeout=0.05)


async def test_list_predictions_paginates(fake: FakeReplicate, client: Client) -> None:
    fake.page_size = 2
    ids = [(await client.predictions.async_create(model=FLUX, input={"prompt": str(i)})).id for i in range(3)]
    first = await client.predictions.async_list()
    assert [p.id for p in first.results] == ids[::-1][:2]
    assert first.next is not None and first.previous is None
    second = await client.predictions.async_list(first.next)
    assert [p.id for p in second.results] == [ids[0]]
    assert second.next is None


async def test_training_reaches_succeeded_and_destination_gets_version(
    fake: FakeReplicate, client: Client, http: httpx.AsyncClient
) -> None:
    trainer = await client.models.async_get(TRAINER_MODEL)
    assert trainer.latest_version is not None
    assert trainer.latest_version.id == fake.trainer_version

    dest = await client.models.async_create("me", "lora-1", visibility="private", hardware="gpu-t4")
    assert (dest.owner, dest.name, dest.visibility, dest.latest_version) == ("me", "lora-1", "private", None)
    with pytest.raises(ReplicateError) as conflict:
        await client.models.async_create("me", "lora-1", visibility="private", hardware="gpu-t4")
    assert conflict.value.status == 409

    fake.script_training(Outcome(polls=2))
    training = await client.trainings.async_create(
        model=TRAINER_MODEL,
        version=trainer.latest_version.id,
        input={"input_images": "https://example.com/photos.zip", "trigger_word": "TOK"},
        destination="me/lora-1",
    )
    assert training.status == "starting"
    assert (training.model, training.version) == (TRAINER_MODEL, fake.trainer_version)
    assert fake.training_creates[0]["destination"] == "me/lora-1"

    statuses = []
    for _ in range(10):
        training = await client.trainings.async_get(training.id)
        statuses.append(training.status)
        if training.status in TERMINAL:
            break
    assert statuses == ["processing", "processing", "succeeded"]
    assert training.destination == "me/lora-1"
    assert isinstance(training.output, dict)
    assert set(training.output) == {"version", "weights"}
    new_version = training.output["version"]
    owner_name, version_id = new_version.split(":")
    assert owner_name == "me/lora-1" and re.fullmatch(r"[0-9a-f]{64}", version_id)
    assert (await http.get(training.output["weights"])).status_code == 200

    dest = await client.models.async_get("me/lora-1")
    assert dest.latest_version is not None and dest.latest_version.id == version_id
    assert (await dest.versions.async_get(version_id)).id == version_id

    fake.script(version_id, Outcome(polls=1))
    pred = await client.predictions.async_create(version=new_version, input={"prompt": "TOK portrait"})
    assert (pred.model, pred.version) == ("me/lora-1", version_id)
    assert [a.status for a in await poll_statuses(client, pred.id)] == ["processing", "succeeded"]


async def test_training_requires_existing_destination_and_can_be_canceled(
    fake: FakeReplicate, client: Client
) -> None:
    with pytest.raises(ReplicateError) as info:
        await client.trainings.async_create(
            model=TRAINER_MODEL, version=fake.trainer_version, input={}, destination="me/missing"
        )
    assert info.value.status == 404

    fake.add_model("me/lora-2")
    fake.script_training(Outcome(hold=asyncio.Event()))
    training = await client.trainings.async_create(
        model=TRAINER_MODEL, version=fake.trainer_version, input={}, destination="me/lora-2"
    )
    assert (await client.trainings.async_get(training.id)).status == "processing"
    canceled = await client.trainings.async_cancel(training.id)
    assert canceled.status == "canceled"
    assert fake.training_cancels == [training.id]
    assert fake.models["me/lora-2"]["latest_version"] is None


async def test_file_upload(fake: FakeReplicate, client: Client, http: httpx.AsyncClient) -> None:
    data = b"PK\x03\x04 fake zip bytes"
    uploaded = await client.files.async_create(
        io.BytesIO(data), filename="photos.zip", content_type="application/zip", metadata={"user": "42"}
    )
    assert uploaded.name == "photos.zip"
    assert uploaded.content_type == "application/zip"
    assert uploaded.size == len(data)
    assert uploaded.checksums["sha256"] == hashlib.sha256(data).hexdigest()
    assert uploaded.metadata == {"user": "42"}
    assert uploaded.urls["get"] == f"{fake.url}/v1/files/{uploaded.id}"
    assert fake.files[uploaded.id] == data

    again = await client.files.async_get(uploaded.id)
    assert again.id == uploaded.id and again.etag == uploaded.etag
    assert [f.id for f in await client.files.async_list()] == [uploaded.id]

    auth = {"Authorization": f"Bearer {fake.token}"}
    download = await http.get(f"/v1/files/{uploaded.id}/download", headers=auth)
    assert download.content == data

    assert await client.files.async_delete(uploaded.id) is True
    assert uploaded.id not in fake.files
