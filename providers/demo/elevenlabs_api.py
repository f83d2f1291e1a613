"""The part of ElevenLabs' HTTP API the product uses (providers/elevenlabs.py through the `elevenlabs`
SDK): text to speech answers a tone (media.py), a clone answers a new voice id and keeps its name, so
a clone whose answer was lost is found again, as at ElevenLabs."""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from providers.demo import media

MAX_VOICES = 1000  # cloned voices remembered; the oldest is forgotten first


def _detail(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"detail": {"status": code, "message": message}}, status=status)


class DemoElevenLabs:
    def __init__(self, api_key: str) -> None:
        self.api_key = api_key
        self.voices: dict[str, str] = {}  # voice id -> name

    def app(self) -> web.Application:
        app = web.Application(client_max_size=32 * 1024 * 1024, middlewares=[self._authorized])
        app.router.add_post("/v1/text-to-speech/{voice_id}", self._speak)
        app.router.add_post("/v1/text-to-speech/{voice_id}/stream", self._speak)
        app.router.add_post("/v1/voices/add", self._clone)
        app.router.add_get("/v2/voices", self._search)
        app.router.add_delete("/v1/voices/{voice_id}", self._delete)
        return app

    @web.middleware
    async def _authorized(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if request.headers.get("xi-api-key") != self.api_key:
            return _detail(401, "invalid_api_key", "Invalid API key")
        return await handler(request)

    async def _speak(self, request: web.Request) -> web.Response:
        # Whatever format was asked, the answer is WAV: the only format the standard library writes
        # (demo mode asks for WAV: generation/catalog.py, DEMO_AUDIO_FORMAT).
        body: Any = await request.json()
        spoken = str(body.get("text", "")) if isinstance(body, dict) else ""
        audio = media.tone_wav(spoken, request.match_info["voice_id"])
        return web.Response(body=audio, content_type="audio/wav")

    async def _clone(self, request: web.Request) -> web.Response:
        form = await request.post()
        voice_id = "demo" + secrets.token_hex(8)
        self.voices[voice_id] = str(form.get("name", "demo voice"))
        while len(self.voices) > MAX_VOICES:
            del self.voices[next(iter(self.voices))]
        return web.json_response({"voice_id": voice_id, "requires_verification": False})

    async def _search(self, request: web.Request) -> web.Response:
        wanted = request.query.get("search", "").lower()
        found = [
            {"voice_id": voice_id, "name": name, "category": "cloned"}
            for voice_id, name in self.voices.items()
            if wanted in name.lower()
        ][:100]
        return web.json_response(
            {"voices": found, "has_more": False, "total_count": len(found), "next_page_token": None}
        )

    async def _delete(self, request: web.Request) -> web.Response:
        if self.voices.pop(request.match_info["voice_id"], None) is None:
            return _detail(404, "voice_not_found", "A voice with this id was not found.")
        return web.json_response({"status": "ok"})
