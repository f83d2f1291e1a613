"""One loopback HTTP server for demo mode, serving whichever providers have no key: Replicate's API
under /replicate, ElevenLabs' under /elevenlabs. Started by the composition root (app.py), which points
the real SDK clients at `replicate_url` / `elevenlabs_url` with `token` as their key. The token is made
up per process and never shown: it only keeps other local programs from using the server."""

from __future__ import annotations

import secrets

from aiohttp import web

from providers.demo.elevenlabs_api import DemoElevenLabs
from providers.demo.replicate_api import DemoReplicate


class DemoServer:
    def __init__(self, *, replicate: bool, elevenlabs: bool, video_models: frozenset[str] = frozenset()):
        self.token = "demo_" + secrets.token_urlsafe(24)
        self.url = ""
        self.replicate = (
            DemoReplicate(self.token, video_models, lambda: self.replicate_url) if replicate else None
        )
        self.elevenlabs = DemoElevenLabs(self.token) if elevenlabs else None
        self._runner: web.AppRunner | None = None

    @property
    def replicate_url(self) -> str:
        return f"{self.url}/replicate"

    @property
    def elevenlabs_url(self) -> str:
        return f"{self.url}/elevenlabs"

    async def start(self) -> None:
        root = web.Application()
        if self.replicate is not None:
            root.add_subapp("/replicate/", self.replicate.app())
        if self.elevenlabs is not None:
            root.add_subapp("/elevenlabs/", self.elevenlabs.app())
        self._runner = web.AppRunner(root, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
