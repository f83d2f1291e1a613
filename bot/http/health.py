"""Health answers: GET /healthz (liveness and readiness; with the API token also the database, Redis
and the plan in force), and for an orchestrator GET /livez and GET /readyz, whose bodies say as little
as possible.

/livez: the process's event loop answers. /readyz: the process is not draining (stopping) and what it
needs answers (`aibot run`: the database; `aibot worker`: the database and Redis); otherwise 503 with
a one-word reason. While a process drains, the routes that take new work answer 503 with Retry-After
(another instance takes the request), and the requests already being handled are waited for.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware
from loguru import logger
from pydantic import SecretStr

from bot.http.keys import GENERATIONS, SERVICES
from bot.http.metrics import metrics_handler
from bot.http.secrets import has_bearer_token
from generation.dispatcher import Dispatcher

# A readiness check that takes longer than this counts as not answering (a hung database or Redis
# must not hang the probe).
CHECK_TIMEOUT = 2.0
# Seconds a client refused while this process drains is asked to wait before trying again.
RETRY_AFTER = "2"


class Readiness:
    """What /readyz answers, and what the process tells the HTTP server when it begins to stop."""

    def __init__(self, checks: Mapping[str, Callable[[], Awaitable[bool]]]) -> None:
        self.checks = dict(checks)  # name (the reason given when it fails) -> does it answer
        self.draining = False
        # Requests that take new work, being handled now: a drain waits for them.
        self.taking_work: set[asyncio.Task[Any]] = set()

    def in_flight(self) -> int:
        """Requests that take new work being handled now."""
        return len(self.taking_work)

    async def not_ready_because(self) -> str | None:
        if self.draining:
            return "draining"
        for name, answers in self.checks.items():
            try:
                ok = await asyncio.wait_for(answers(), timeout=CHECK_TIMEOUT)
            except Exception:
                ok = False
            if not ok:
                return name
        return None


READINESS = web.AppKey("readiness", Readiness)


async def livez(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def readyz(request: web.Request) -> web.Response:
    reason = await request.app[READINESS].not_ready_because()
    if reason is None:
        return web.Response(text="ready")
    return web.Response(status=503, text=reason)


def refuse_new_work_while_draining(readiness: Readiness, paths: Collection[str]) -> Middleware:
    """A middleware for the routes (by their path pattern) that take new work: refused with 503 and
    Retry-After while the process drains; tracked while handled, so the drain waits for them."""

    @web.middleware
    async def middleware(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        route = request.match_info.route.resource
        if route is None or route.canonical not in paths:
            return await handler(request)
        if readiness.draining:
            return web.json_response(
                {"error": "this server is stopping: try again shortly"},
                status=503,
                headers={"Retry-After": RETRY_AFTER},
            )
        task = asyncio.current_task()
        assert task is not None
        readiness.taking_work.add(task)
        try:
            return await handler(request)
        finally:
            readiness.taking_work.discard(task)

    return middleware


def probes_app(readiness: Readiness, metrics_token: SecretStr | None = None) -> web.Application:
    """The small HTTP server of a process that has no other (`aibot worker`): /livez, /readyz, and
    /metrics (what this process counted; METRICS_TOKEN, when set, guards it)."""
    app = web.Application()
    app[READINESS] = readiness
    app.router.add_get("/livez", livez)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_handler(metrics_token))
    return app


async def health(request: web.Request) -> web.Response:
    """Everyone learns whether the process serves (the status, and 200 or 503, for a load balancer or
    compose's healthcheck); only a caller with the API token learns how (database, Redis, the plan, the
    mode and who set it, the breaker): those say when and how this server is weak."""
    services = request.app[SERVICES]
    database_ok = await services.db.ping()
    if not database_ok:
        logger.warning("health check: database not answering")
    status = 200 if database_ok else 503
    body: dict[str, Any] = {"status": "ok" if database_ok else "unavailable"}
    if has_bearer_token(request.headers.get("Authorization", ""), services.settings.api_token):
        body.update(await _details(request.app[GENERATIONS], database_ok))
    return web.json_response(body, status=status)


async def _details(generations: Dispatcher, database_ok: bool) -> dict[str, Any]:
    redis_ok = await generations.queue.ping() if generations.queue is not None else None
    mode, source = await generations.mode() if database_ok else (None, None)
    plan = (await generations.current_plan(redis_ok)).value if database_ok else None
    return {
        "database": database_ok,
        "redis": redis_ok,
        "plan": plan,
        "mode": mode.value if mode else None,
        "mode_source": source,
        "breaker": generations.breaker.state.value,
    }
