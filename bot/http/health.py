"""GET /healthz: liveness and readiness (database, Redis, the plan in force)."""

from __future__ import annotations

from aiohttp import web
from loguru import logger

from bot.http.keys import GENERATIONS, SERVICES


async def health(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    generations = request.app[GENERATIONS]
    database_ok = await services.db.ping()
    redis_ok = await generations.queue.ping() if generations.queue is not None else None
    mode, source = await generations.mode() if database_ok else (None, None)
    plan = (await generations.current_plan(redis_ok)).value if database_ok else None
    body = {
        "status": "ok" if database_ok else "unavailable",
        "database": database_ok,
        "redis": redis_ok,
        "plan": plan,
        "mode": mode.value if mode else None,
        "mode_source": source,
        "breaker": generations.breaker.state.value,
    }
    if not database_ok:
        logger.warning("health check: database not answering")
    return web.json_response(body, status=200 if database_ok else 503)
