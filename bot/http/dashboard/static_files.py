"""The page's script and style sheet, served by the app itself (no CDN, no build step): read once, from
a fixed list, so no path a client sends can name another file."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web
from aiohttp.typedefs import Handler

STATIC = Path(__file__).with_name("static")
CONTENT_TYPES = {"dashboard.js": "text/javascript", "dashboard.css": "text/css"}


def load_static() -> dict[str, tuple[bytes, str]]:
    return {name: ((STATIC / name).read_bytes(), kind) for name, kind in CONTENT_TYPES.items()}


def static_handler(files: dict[str, tuple[bytes, str]]) -> Handler:
    async def serve(request: web.Request) -> web.Response:
        found = files.get(request.match_info["name"])
        if found is None:
            return web.json_response({"error": "no such file"}, status=404)
        body, kind = found
        return web.Response(body=body, content_type=kind, charset="utf-8")

    return serve
