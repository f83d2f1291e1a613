"""The headers every answer under /admin carries, whatever answers it (a page, the JSON, a redirect, a
refusal, aiohttp's own 404): nothing of it is kept by a cache, and the page may load, run, fetch and
post to this server only, inside no frame."""

from __future__ import annotations

from aiohttp import web

ADMIN_PREFIX = "/admin"
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
    ]
)
ADMIN_HEADERS = {
    # The page shows money and users: neither the browser nor a proxy may keep a copy.
    "Cache-Control": "no-store",
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


async def secure_admin_answers(request: web.Request, response: web.StreamResponse) -> None:
    """An on_response_prepare hook: it sees every answer, raised refusals included (a middleware
    would not see aiohttp's own)."""
    if request.path == ADMIN_PREFIX or request.path.startswith(ADMIN_PREFIX + "/"):
        response.headers.update(ADMIN_HEADERS)
