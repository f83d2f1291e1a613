"""GET /metrics (SPEC §2.3): Prometheus's text format, on `aibot run`'s server and on `aibot worker`'s
probes port. Open like /healthz unless METRICS_TOKEN is set; then only `Authorization: Bearer <token>`
reads it (the figures tell how busy and how weak a server is).

What every process counted (prometheus_client's default registry), then, for `aibot run`, the gauges
of the running app read at this scrape (metrics.py `live_families`): rendered through a
registry of their own made for the scrape, so nothing tied to one App outlives it or is registered
twice when another App starts in the same process.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector, CollectorRegistry
from pydantic import SecretStr

from bot.http.keys import GENERATIONS, SERVICES
from bot.http.secrets import has_bearer_token
from metrics import live_families

LiveFamilies = Callable[[web.Request], Awaitable[list[Metric]]]


def metrics_handler(token: SecretStr | None, live: LiveFamilies | None = None) -> Handler:
    """The route: the process's counters and histograms, and `live`'s gauges when given."""
    required = token is not None and bool(token.get_secret_value())

    async def serve_metrics(request: web.Request) -> web.StreamResponse:
        if required and not has_bearer_token(request.headers.get("Authorization", ""), token):
            return web.json_response(
                {"error": "METRICS_TOKEN is required"}, status=401, headers={"WWW-Authenticate": "Bearer"}
            )
        body = generate_latest(REGISTRY)
        if live is not None:
            body += generate_latest(_registry_of(await live(request)))
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    return serve_metrics


async def app_gauges(request: web.Request) -> list[Metric]:
    """`aibot run`'s gauges: its dispatcher's breaker, plan mode, work in flight and queue, each source
    given REDIS_TIMEOUT seconds."""
    services = request.app[SERVICES]
    return await live_families(request.app[GENERATIONS], timeout=services.settings.redis_timeout)


class _Collected(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> list[Metric]:
        return self.families


def _registry_of(families: list[Metric]) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collected(families))
    return registry
