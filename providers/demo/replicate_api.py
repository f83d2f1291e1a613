"""The part of Replicate's HTTP API the product uses (providers/replicate.py through the `replicate`
SDK), answered at once with local results: predictions and trainings are created already succeeded.

State is in memory, per process, and bounded: a demo needs no history beyond the generations in
flight. Outputs are made when downloaded, from the stored prompt, so nothing large is held."""

from __future__ import annotations

import hashlib
import secrets
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import aiohttp
from aiohttp import web

from providers.demo import media

JSON = dict[str, Any]
KEEP = 2000  # predictions, trainings and files remembered (oldest forgotten first)
_ID_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _new_id() -> str:
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(26))


def _version_of(model: str) -> str:
    return hashlib.sha256(model.encode()).hexdigest()


def _problem(status: int, title: str, detail: str) -> web.Response:
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail}
    return web.json_response(body, status=status, content_type="application/problem+json")


class _Bounded(OrderedDict[str, JSON]):
    def remember(self, key: str, value: JSON) -> None:
        self[key] = value
        while len(self) > KEEP:
            self.popitem(last=False)


class DemoReplicate:
    """`video_models`: the "owner/name" refs whose output is a clip rather than images (the catalogue
    knows; the composition root passes it, as providers do not read the catalogue)."""

    def __init__(self, token: str, video_models: frozenset[str], public_url: Callable[[], str]) -> None:
        self.token = token
        self.video_models = video_models
        self._url = public_url
        self.predictions = _Bounded()
        self.trainings = _Bounded()
        self.models: dict[str, JSON] = {}

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024, middlewares=[self._authorized])
        r = app.router
        r.add_post("/v1/models/{owner}/{name}/predictions", self._create_model_prediction)
        r.add_post("/v1/predictions", self._create_version_prediction)
        r.add_get("/v1/predictions", self._list(self.predictions))
        r.add_get("/v1/predictions/{id}", self._get(self.predictions))
        r.add_post("/v1/predictions/{id}/cancel", self._get(self.predictions))
        r.add_get("/v1/account", self._account)
        r.add_post("/v1/models", self._create_model)
        r.add_get("/v1/models/{owner}/{name}", self._get_model)
        r.add_post("/v1/models/{owner}/{name}/versions/{version}/trainings", self._create_training)
        r.add_get("/v1/trainings", self._list(self.trainings))
        r.add_get("/v1/trainings/{id}", self._get(self.trainings))
        r.add_post("/v1/trainings/{id}/cancel", self._get(self.trainings))
        r.add_post("/v1/files", self._create_file)
        r.add_get("/delivery/{id}/{index}.{ext}", self._delivery)
        return app

    @web.middleware
    async def _authorized(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        # Downloads are unauthenticated, as Replicate's delivery URLs are.
        if request.match_info.handler == self._delivery:
            return await handler(request)
        if request.headers.get("Authorization") not in (f"Bearer {self.token}", f"Token {self.token}"):
            return _problem(401, "Unauthenticated", "You did not pass a valid authentication token")
        return await handler(request)

    # --- predictions --------------------------------------------------------------------------------

    async def _create_model_prediction(self, request: web.Request) -> web.Response:
        model = f"{request.match_info['owner']}/{request.match_info['name']}"
        return await self._create_prediction(request, model, _version_of(model))

    async def _create_version_prediction(self, request: web.Request) -> web.Response:
        body = await request.json()
        model, _, version = str(body.get("version", "")).rpartition(":")
        return await self._create_prediction(request, model or "demo/trained", version, body)

    async def _create_prediction(
        self, request: web.Request, model: str, version: str, body: JSON | None = None
    ) -> web.Response:
        body = body if body is not None else await request.json()
        given = body.get("input")
        inputs: JSON = given if isinstance(given, dict) else {}
        prediction_id = _new_id()
        prediction = self._job(prediction_id, "predictions", model, version, inputs)
        prediction["output"] = self._prediction_output(prediction_id, model, inputs)
        self.predictions.remember(prediction_id, prediction)
        return web.json_response(prediction, status=201)

    def _prediction_output(self, prediction_id: str, model: str, inputs: JSON) -> Any:
        if model in self.video_models:
            return f"{self._url()}/delivery/{prediction_id}/0.gif"
        try:
            count = max(1, min(4, int(inputs.get("num_outputs", 1))))
        except (TypeError, ValueError):
            count = 1
        return [f"{self._url()}/delivery/{prediction_id}/{index}.png" for index in range(count)]

    def _job(self, job_id: str, collection: str, model: str, version: str, inputs: JSON) -> JSON:
        now = _now()
        return {
            "id": job_id,
            "model": model,
            "version": version,
            "input": inputs,
            "logs": "demo mode: made locally\n",
            "output": None,
            "error": None,
            "source": "api",
            "status": "succeeded",
            "created_at": now,
            "started_at": now,
            "completed_at": now,
            "metrics": {"predict_time": 0.0},
            "urls": {
                "get": f"{self._url()}/v1/{collection}/{job_id}",
                "cancel": f"{self._url()}/v1/{collection}/{job_id}/cancel",
            },
        }

    @staticmethod
    def _get(jobs: _Bounded) -> Callable[[web.Request], Awaitable[web.Response]]:
        # A cancel answers the job as it is: it has already succeeded.
        async def get(request: web.Request) -> web.Response:
            job = jobs.get(request.match_info["id"])
            return web.json_response(job) if job is not None else _problem(404, "Not found", "Not found.")

        return get

    @staticmethod
    def _list(jobs: _Bounded) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def listing(request: web.Request) -> web.Response:
            newest_first = list(reversed(jobs.values()))[:100]
            return web.json_response({"previous": None, "next": None, "results": newest_first})

        return listing

    async def _delivery(self, request: web.Request) -> web.Response:
        prediction = self.predictions.get(request.match_info["id"])
        if prediction is None:
            if request.match_info["ext"] == "tar":
                return web.Response(body=media.weights_tar(), content_type="application/x-tar")
            return _problem(404, "Not found", "Not found.")
        prompt = str(prediction["input"].get("prompt", ""))
        if request.match_info["ext"] == "gif":
            return web.Response(body=media.clip_gif(prompt), content_type="image/gif")
        index = int(request.match_info["index"]) if request.match_info["index"].isdigit() else 0
        return web.Response(body=media.image_png(prompt, index), content_type="image/png")

    # --- account, models, trainings, files ----------------------------------------------------------

    async def _account(self, request: web.Request) -> web.Response:
        return web.json_response({"type": "user", "username": "demo", "name": "Demo", "github_url": None})

    def _model(self, owner: str, name: str, visibility: str = "public") -> JSON:
        version = {"id": _version_of(f"{owner}/{name}"), "created_at": _now(), "cog_version": "0.9.6"}
        return {
            "url": f"{self._url()}/{owner}/{name}",
            "owner": owner,
            "name": name,
            "description": "demo model",
            "visibility": visibility,
            "run_count": 0,
            "latest_version": {**version, "openapi_schema": {}},
        }

    async def _create_model(self, request: web.Request) -> web.Response:
        body = await request.json()
        key = f"{body.get('owner')}/{body.get('name')}"
        if key in self.models:
            return _problem(409, "Conflict", f"A model with the name {key} already exists")
        self.models[key] = self._model(str(body.get("owner")), str(body.get("name")), "private")
        return web.json_response(self.models[key], status=201)

    async def _get_model(self, request: web.Request) -> web.Response:
        # Every model exists in the demo (a trainer, a public model): one made up on first sight.
        owner, name = request.match_info["owner"], request.match_info["name"]
        return web.json_response(self.models.get(f"{owner}/{name}") or self._model(owner, name))

    async def _create_training(self, request: web.Request) -> web.Response:
        body = await request.json()
        trainer = f"{request.match_info['owner']}/{request.match_info['name']}"
        given = body.get("input")
        training_id = _new_id()
        training = self._job(
            training_id,
            "trainings",
            trainer,
            request.match_info["version"],
            given if isinstance(given, dict) else {},
        )
        destination = str(body.get("destination", "demo/model"))
        training["output"] = {
            "version": f"{destination}:{_version_of(training_id)}",
            "weights": f"{self._url()}/delivery/{training_id}/0.tar",
        }
        self.trainings.remember(training_id, training)
        return web.json_response(training, status=201)

    async def _create_file(self, request: web.Request) -> web.Response:
        # The content is read and dropped: a demo training never looks at the photos.
        size = 0
        name = "file"
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if isinstance(part, aiohttp.BodyPartReader) and part.name == "content":
                name = part.filename or name
                size = len(await part.read())
        file_id = _new_id()
        return web.json_response(
            {
                "id": file_id,
                "name": name,
                "content_type": "application/octet-stream",
                "size": size,
                "etag": file_id,
                "checksums": {},
                "metadata": {},
                "created_at": _now(),
                "expires_at": None,
                "urls": {"get": f"{self._url()}/v1/files/{file_id}"},
            },
            status=201,
        )
