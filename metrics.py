"""Prometheus metrics (GET /metrics): what every process counts, and what `aibot run` reads at scrape.

Everything is defined once, here, in prometheus_client's default registry: the module is imported once
per process, so building another App (tests build many in one process) never registers a metric twice;
tests compare values before and after. Label values are bounded and name no one: kinds, catalogue
model ids, plans, statuses, error reasons and class names, providers and their operations, Telegram
method names. Never a user id, a chat, a prompt or a generation id.

A leaf module (prometheus_client and the typed provider errors only), so every layer, the providers
included, may record into it. The gauges that describe the running app (breaker, plan mode, work in
flight, the queue) are not kept here between scrapes: `live_families` reads them at each scrape.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from prometheus_client import Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from providers.errors import ProviderRateLimited, StepError

if TYPE_CHECKING:
    from generation.dispatcher import Dispatcher

T = TypeVar("T")

# From a fast accept (milliseconds) to a long video (ten minutes); longer lands in +Inf.
SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
# A reason for an error that is not one of ours (a bug, most likely).
UNEXPECTED = "unexpected"

# --- generations -------------------------------------------------------------------------------------

GENERATIONS = Counter(
    "aibot_generations",
    "Generations that ended, counted once each when they settle (done, failed) or are canceled.",
    ["kind", "model", "plan", "status"],
)
FAILURES = Counter(
    "aibot_generation_failures",
    "Generations that failed for good, by the reason the user was given ('unexpected': not a typed error).",
    ["kind", "plan", "reason"],
)
RETRIES = Counter(
    "aibot_generation_retries",
    "Tries that failed in a way that may pass and are tried again (Plan A), by reason.",
    ["kind", "plan", "reason"],
)
DEFERRALS = Counter(
    "aibot_generation_deferrals",
    "Plan A jobs put off without a failure: the provider still works, a limit is full, Redis went away.",
    ["kind", "plan", "cause"],
)

ACCEPT_SECONDS = Histogram(
    "aibot_generation_accept_seconds",
    "From a request coming in (validated, checked) to its generation being recorded and charged.",
    ["plan", "kind"],
    buckets=SECONDS_BUCKETS,
)
QUEUE_WAIT_SECONDS = Histogram(
    "aibot_generation_queue_wait_seconds",
    "From a generation being recorded to a runner first claiming it (waits for a slot included).",
    ["plan", "kind"],
    buckets=SECONDS_BUCKETS,
)
PROVIDER_SECONDS = Histogram(
    "aibot_generation_provider_seconds",
    "From the provider's job (a Replicate prediction or training) being created to its output being in "
    "hand, ready to be handed to the chat (or settled, without a chat).",
    ["plan", "kind"],
    buckets=SECONDS_BUCKETS,
)
DELIVERY_SECONDS = Histogram(
    "aibot_generation_delivery_seconds",
    "From the result being handed to the chat to Telegram having it.",
    ["plan", "kind"],
    buckets=SECONDS_BUCKETS,
)
END_TO_END_SECONDS = Histogram(
    "aibot_generation_end_to_end_seconds",
    "From a generation being recorded to it being settled or canceled.",
    ["plan", "kind", "status"],
    buckets=SECONDS_BUCKETS,
)

# --- money -------------------------------------------------------------------------------------------

STARS_CHARGED = Counter(
    "aibot_stars_charged", "Stars charged for generations as they were recorded.", ["kind"]
)
STARS_REFUNDED = Counter(
    "aibot_stars_refunded",
    "Stars refunded for what generations did not deliver (failed, canceled).",
    ["kind"],
)
STARS_BOUGHT = Counter("aibot_stars_bought", "Stars credited for Telegram Stars payments, once per payment.")

# --- calls to the providers and to Telegram ----------------------------------------------------------

PROVIDER_CALLS = Counter(
    "aibot_provider_calls", "Calls to a provider's API (Telegram's Bot API too).", ["provider", "operation"]
)
PROVIDER_ERRORS = Counter(
    "aibot_provider_errors",
    "Provider calls that failed, by the error's class (the typed error, or the SDK's own).",
    ["provider", "operation", "error"],
)
PROVIDER_RATE_LIMITED = Counter(
    "aibot_provider_rate_limited",
    "Provider calls answered 'too many requests' (HTTP 429, or the provider's own busy answer).",
    ["provider", "operation"],
)
PROVIDER_CALL_SECONDS = Histogram(
    "aibot_provider_call_seconds",
    "How long one provider call took, failed or not.",
    ["provider", "operation"],
    buckets=SECONDS_BUCKETS,
)


# Each metric's child for its label values, found once: prometheus_client's `labels()` takes a lock
# and builds its key on every call, a dozen times per generation. The values are few (kinds, plans,
# statuses, models of the catalogue, providers' operations and error types).
@functools.cache
def _child(metric: Any, *values: str) -> Any:
    return metric.labels(*values)


@contextmanager
def provider_call(
    provider: str,
    operation: str,
    rate_limited: type[BaseException] | tuple[type[BaseException], ...] = ProviderRateLimited,
) -> Iterator[None]:
    """Count and time one call to `provider`, around the code that maps its errors to typed ones (so
    the error counted is the typed one). A call cut short (a cancellation) counts, without an error."""
    operation = operation.replace(" ", "_")
    _child(PROVIDER_CALLS, provider, operation).inc()
    started = time.perf_counter()
    try:
        yield
    except Exception as error:
        _child(PROVIDER_ERRORS, provider, operation, type(error).__name__).inc()
        if isinstance(error, rate_limited):
            _child(PROVIDER_RATE_LIMITED, provider, operation).inc()
        raise
    finally:
        _child(PROVIDER_CALL_SECONDS, provider, operation).observe(time.perf_counter() - started)


# --- recording what happened to a generation ---------------------------------------------------------


def error_reason(error: BaseException) -> str:
    """A failure's reason: the typed error's (a user text's key), else one fixed word."""
    return error.reason if isinstance(error, StepError) else UNEXPECTED


def since(epoch_seconds: float) -> float:
    """Seconds from a wall-clock moment (a row's created_at, a journaled time) until now; never below
    zero (two hosts' clocks may disagree a little)."""
    return max(0.0, time.time() - epoch_seconds)


def charged(kind: str, price: int) -> None:
    """A new generation was recorded and charged for (committed)."""
    _child(STARS_CHARGED, kind).inc(price)


def accepted(kind: str, plan: str, seconds: float) -> None:
    """A request was answered with the new generation it recorded, on `plan`."""
    _child(ACCEPT_SECONDS, plan, kind).observe(seconds)


def delivered(
    kind: str,
    plan: str,
    *,
    provider_started_at: float | None,
    handed_over_at: float | None,
    delivered_at: float,
) -> None:
    """A generation's output reached the user (or, with no chat to hand it to, is in hand): how long
    the provider took from its job's creation (when the journal tells it) to the output being ready to
    hand over, and how long the hand-over to the chat took. Wall-clock moments as journaled: a job may
    span tries and processes."""
    output_at = handed_over_at if handed_over_at is not None else delivered_at
    if provider_started_at is not None:
        _child(PROVIDER_SECONDS, plan, kind).observe(max(0.0, output_at - provider_started_at))
    if handed_over_at is not None:
        _child(DELIVERY_SECONDS, plan, kind).observe(max(0.0, delivered_at - handed_over_at))


def ended(kind: str, model: str, plan: str, status: str, refund: int, age_seconds: float) -> None:
    """A generation reached its final status (committed, once): done, failed or canceled."""
    _child(GENERATIONS, kind, model, plan, status).inc()
    _child(END_TO_END_SECONDS, plan, kind, status).observe(age_seconds)
    if refund > 0:
        _child(STARS_REFUNDED, kind).inc(refund)


# --- what the running app looks like, read at each scrape ------------------------------------------


@dataclass(frozen=True)
class InFlight:
    """Generations of one plan that run (hold their slots: working, or waiting on the provider) and
    that wait in line for a slot."""

    running: int
    waiting: int


async def live_families(dispatcher: Dispatcher, timeout: float) -> list[Metric]:
    """The gauges of a running `aibot run`, read now. Each source (the database, Redis) gets `timeout`
    seconds; one that fails or hangs leaves its gauges out and says so in aibot_metrics_source_up,
    so a scrape never fails because Redis or the database does."""
    families: list[Metric] = []
    source_up = GaugeMetricFamily(
        "aibot_metrics_source_up",
        "Whether the scrape could read a source (database, redis).",
        labels=["source"],
    )

    breaker = GaugeMetricFamily(
        "aibot_breaker_state", "The queue's circuit breaker: 1 for the state it is in.", labels=["state"]
    )
    current_state = dispatcher.breaker.state
    for state in type(current_state):
        breaker.add_metric([state.value], 1.0 if state is current_state else 0.0)
    families.append(breaker)

    # Read side by side: a hung source costs the scrape `timeout` once, not once per reading.
    queue = dispatcher.queue
    mode, plan_a, depth = await asyncio.gather(
        _within(timeout, dispatcher.mode()),
        _within(timeout, queue.in_flight() if queue is not None else None),
        _within(timeout, queue.depth() if queue is not None else None),
    )
    source_up.add_metric(["database"], 0.0 if mode is None else 1.0)
    if mode is not None:
        current_mode, _ = mode
        modes = GaugeMetricFamily(
            "aibot_plan_mode", "The plan mode in force (a, b, auto): 1 for the one in force.", labels=["mode"]
        )
        for each in type(current_mode):
            modes.add_metric([each.value], 1.0 if each is current_mode else 0.0)
        families.append(modes)

    running = GaugeMetricFamily(
        "aibot_generations_running",
        "Generations in flight (holding their slots). Plan A: every worker's, from Redis; Plan B: this "
        "process's.",
        labels=["plan"],
    )
    waiting = GaugeMetricFamily(
        "aibot_generations_waiting",
        "Generations waiting in line for a slot. Plan A: from Redis; Plan B: this process's.",
        labels=["plan"],
    )
    inline = dispatcher.inline.in_flight()
    running.add_metric(["B"], inline.running)
    waiting.add_metric(["B"], inline.waiting)
    places = dispatcher.services.working
    working = GaugeMetricFamily(
        "aibot_working_places",
        "Runs working at once in this process (Plan B's runs and the embedded worker's Plan A jobs), "
        "as many as its event loop keeps up with (generation/pace.py): the places there are now, "
        "those taken, and runs waiting for one.",
        labels=["state"],
    )
    for part, value in (("size", places.size), ("taken", places.taken), ("waiting", places.waiting)):
        working.add_metric([part], value)
    families.append(working)
    if queue is not None:
        source_up.add_metric(["redis"], 0.0 if plan_a is None or depth is None else 1.0)
        if plan_a is not None:
            running.add_metric(["A"], plan_a.running)
            waiting.add_metric(["A"], plan_a.waiting)
        if depth is not None:
            families.append(
                GaugeMetricFamily(
                    "aibot_queue_depth",
                    "Jobs in arq's queue, deferred ones (retries, waits) included.",
                    value=depth,
                )
            )
    families += [running, waiting, source_up]
    return families


async def _within(timeout: float, reading: Awaitable[T] | None) -> T | None:
    if reading is None:
        return None
    try:
        return await asyncio.wait_for(reading, timeout=timeout)
    except Exception:  # a source down or hung: its gauges are left out of this scrape
        return None
