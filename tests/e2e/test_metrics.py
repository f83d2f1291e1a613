"""GET /metrics: the whole app in-process (real Redis, SQLite, the real SDKs against the fakes), driven
through its HTTP API on both plans, then scraped and parsed as Prometheus would: every counter and
histogram moved by exactly what happened (the metrics live in the process's registry, shared by every
App a test run starts, so each test compares a scrape after with one before), and no label names a
user, a prompt or a generation."""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiogram.exceptions import TelegramRetryAfter
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from app import App, StandaloneWorker
from generation.pace import FEWEST
from generation.plan import PlanMode
from generation.store import LedgerEntry
from tests.conftest import API_TOKEN, AppFactory, closed_port, make_settings, wait_until
from tests.e2e.helpers import USER, Chat, all_settled, balance_and_ledger_sum, generations_of
from tests.e2e.test_payments import buy, pay
from tests.fakes.elevenlabs import ApiError, FakeElevenLabs
from tests.fakes.replicate import FakeReplicate, Outcome
from tests.fakes.tcp_proxy import TcpProxy
from tests.fakes.telegram import FakeTelegram

AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
SEED = {"telegram_id": USER, "username": "fox", "is_ru": False, "bot_name": "image_bot"}
FLUX = "black-forest-labs/flux-schnell"
# What users asked for: none of it may ever be a label value.
PROMPTS = ["a lighthouse in fog", "a model that crashes", "read this aloud", "a fox running"]
CANCELED_PROMPT, WAITING_PROMPT, BUSY_TEXT = "never mind this one", "waits its turn", "too busy to speak"
REPLICATE_KINDS = {"text_to_image", "text_to_video", "image_to_video", "neuro_photo", "model_training"}
DELIVERED_METHODS = ("sendMediaGroup", "sendPhoto", "sendVoice", "sendVideo")


@dataclass
class Scrape:
    """One GET /metrics, parsed: the families it names, and every sample by its name and labels."""

    families: set[str]
    samples: dict[str, list[tuple[dict[str, str], float]]]

    def value(self, name: str, **labels: str) -> float | None:
        found = [value for have, value in self.samples.get(name, []) if labels.items() <= have.items()]
        return sum(found) if found else None

    def by(self, name: str, keys: Iterable[str]) -> dict[tuple[str, ...], float]:
        """The samples of `name` summed by the values of the labels `keys`."""
        keys = tuple(keys)
        totals: defaultdict[tuple[str, ...], float] = defaultdict(float)
        for labels, value in self.samples.get(name, []):
            totals[tuple(labels[key] for key in keys)] += value
        return dict(totals)

    def label_values(self) -> set[str]:
        return {
            value for samples in self.samples.values() for labels, _ in samples for value in labels.values()
        }


def moved(before: Scrape, after: Scrape, name: str, *keys: str) -> dict[tuple[str, ...], float]:
    """How much each labelled sample of `name` moved between two scrapes (those that moved)."""
    start, end = before.by(name, keys), after.by(name, keys)
    return {
        labels: value - start.get(labels, 0.0)
        for labels, value in end.items()
        if value != start.get(labels, 0.0)
    }


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def base(app: App) -> str:
    return f"http://127.0.0.1:{app.http_port}"


async def scrape(http: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None) -> Scrape:
    async with http.get(url, headers=headers) as response:
        assert response.status == 200, await response.text()
        assert response.headers["Content-Type"].startswith("text/plain; version=")  # Prometheus text format
        text = await response.text()
    families: set[str] = set()
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        families.add(family.name)
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return Scrape(families, samples)


async def post(http: aiohttp.ClientSession, app: App, kind: str, body: dict[str, Any]) -> dict[str, Any]:
    async with http.post(f"{base(app)}/api/generation/{kind}", json={**SEED, **body}, headers=AUTH) as answer:
        assert answer.status == 202, await answer.text()
        accepted: dict[str, Any] = await answer.json()
        return accepted


async def ledger_by_kind(app: App, prefix: str) -> Counter[tuple[str, ...]]:
    """Stars per kind in the ledger lines whose operation key starts with `prefix` (charge:, refund:)."""
    kinds = {generation.id: generation.kind for generation in await generations_of(app)}
    assert app.services is not None
    async with app.services.db.sessions() as session:
        entries = await session.scalars(
            select(LedgerEntry).where(LedgerEntry.operation_key.startswith(prefix))
        )
        totals: Counter[tuple[str, ...]] = Counter()
        for entry in entries:
            assert entry.generation_id is not None
            totals[(kinds[entry.generation_id],)] += abs(entry.amount)
    return totals


def delivered_calls(telegram: FakeTelegram, since: int) -> Counter[tuple[str, ...]]:
    return Counter(
        ("telegram", call.method) for call in telegram.calls[since:] if call.method in DELIVERED_METHODS
    )


async def test_metrics_count_what_happened_on_both_plans(
    make_app: AppFactory,
    http: aiohttp.ClientSession,
    telegram: FakeTelegram,
    replicate: FakeReplicate,
    elevenlabs: FakeElevenLabs,
    redis_url: str,
) -> None:
    # One generation per user at a time: a second one on Plan B waits in line. A Plan A job waits on
    # the provider for a moment only, then is deferred and looks again.
    app = await make_app(
        redis_url=redis_url, new_user_bonus=500, limit_per_user=1, job_wait_budget=0.2, long_wait_poll=0.3
    )
    url = f"{base(app)}/metrics"
    before = await scrape(http, url)  # open: METRICS_TOKEN is not set
    calls_before = len(telegram.calls)

    # Plan A (the embedded worker): an image held at the provider is in flight, from Redis's slots.
    held = asyncio.Event()
    replicate.script(FLUX, Outcome(hold=held), Outcome(status="failed", error="the model crashed"))
    first = await post(http, app, "text-to-image", {"prompt": PROMPTS[0], "num_images": 2})
    assert first["plan"] == "A"
    await replicate.wait_for_create(1)
    during = await scrape(http, url)
    assert during.value("aibot_generations_running", plan="A") == 1
    assert during.value("aibot_metrics_source_up", source="redis") == 1

    async def put_off() -> bool:  # the job gave its worker back while the provider worked
        now = await scrape(http, url)
        return bool(moved(before, now, "aibot_generation_deferrals_total", "cause"))

    await wait_until(put_off)
    held.set()
    await all_settled(app, 1)
    await post(http, app, "text-to-image", {"prompt": PROMPTS[1]})  # fails at the provider
    await all_settled(app, 2)
    await post(http, app, "text-to-speech", {"text": PROMPTS[2]})
    await all_settled(app, 3)
    await post(http, app, "text-to-video", {"prompt": PROMPTS[3]})
    await all_settled(app, 4)

    # Plan B (inline): one held and canceled while another waits its turn behind it, then a speech
    # that ElevenLabs refuses as too busy (Plan B tries once: it fails, refunded).
    assert app.generations is not None
    await app.generations.set_mode(PlanMode.b)
    held_b = asyncio.Event()
    replicate.script(FLUX, Outcome(hold=held_b))
    canceled = await post(http, app, "text-to-image", {"prompt": CANCELED_PROMPT})
    await replicate.wait_for_create(4)
    waiting = await post(http, app, "text-to-image", {"prompt": WAITING_PROMPT})
    assert (canceled["plan"], waiting["plan"]) == ("B", "B")

    async def one_waits() -> bool:
        return (await scrape(http, url)).value("aibot_generations_waiting", plan="B") == 1

    await wait_until(one_waits)
    during = await scrape(http, url)
    assert during.value("aibot_generations_running", plan="B") == 1
    # The running one only waits for its provider: it holds a place at most while it looks again.
    assert (during.value("aibot_working_places", state="size") or 0) >= FEWEST
    assert during.value("aibot_working_places", state="taken") in (0, 1)
    assert during.value("aibot_working_places", state="waiting") == 0
    assert (
        during.value("aibot_plan_mode", mode="b") == 1 and during.value("aibot_plan_mode", mode="auto") == 0
    )
    assert await app.generations.cancel(canceled["id"]) is not None
    held_b.set()
    await all_settled(app, 6)
    elevenlabs.fail_next("tts", ApiError.too_many_concurrent_requests())
    await post(http, app, "text-to-speech", {"text": BUSY_TEXT})
    await all_settled(app, 7)

    # A Bot API call answered 429.
    telegram.fail_next(
        "sendChatAction", error_code=429, description="Too Many Requests: retry after 3", retry_after=3
    )
    with pytest.raises(TelegramRetryAfter):
        await app.bots["image_bot"].send_chat_action(USER, "typing")

    after = await scrape(http, url)
    generations = await generations_of(app)
    statuses = Counter((g.plan, g.status) for g in generations)
    assert statuses == {
        ("A", "done"): 3,
        ("A", "failed"): 1,
        ("B", "canceled"): 1,
        ("B", "done"): 1,
        ("B", "failed"): 1,
    }

    # Each generation counted once, as it ended; each histogram observed once per generation that
    # got that far.
    ended = Counter((g.kind, g.model, g.plan, g.status) for g in generations)
    assert moved(before, after, "aibot_generations_total", "kind", "model", "plan", "status") == ended
    assert moved(before, after, "aibot_generation_failures_total", "kind", "plan", "reason") == {
        ("text_to_image", "A", "failed_generic"): 1,
        ("text_to_speech", "B", "failed_busy"): 1,
    }
    every = Counter((g.plan, g.kind) for g in generations)
    assert moved(before, after, "aibot_generation_accept_seconds_count", "plan", "kind") == every
    assert moved(before, after, "aibot_generation_queue_wait_seconds_count", "plan", "kind") == every
    assert moved(
        before, after, "aibot_generation_end_to_end_seconds_count", "plan", "kind", "status"
    ) == Counter((g.plan, g.kind, g.status) for g in generations)
    done = [g for g in generations if g.status == "done"]
    assert moved(before, after, "aibot_generation_delivery_seconds_count", "plan", "kind") == Counter(
        (g.plan, g.kind) for g in done
    )
    assert moved(before, after, "aibot_generation_provider_seconds_count", "plan", "kind") == Counter(
        (g.plan, g.kind) for g in done if g.kind in REPLICATE_KINDS
    )
    # The held image was at the provider at least a try's wait budget (0.2 s) before it was put off
    # and released: its provider time, read from its journal, says so.
    provider_time = moved(before, after, "aibot_generation_provider_seconds_sum", "plan", "kind")
    assert provider_time[("A", "text_to_image")] >= 0.2

    # Nothing failed in a way that is tried again; the held image was put off while the provider worked.
    assert moved(before, after, "aibot_generation_retries_total", "kind", "plan", "reason") == {}
    deferrals = moved(before, after, "aibot_generation_deferrals_total", "kind", "plan", "cause")
    assert set(deferrals) == {("text_to_image", "A", "provider_working")}

    # Stars: charged as recorded, refunded as failed or canceled, exactly as the ledger says.
    charged = moved(before, after, "aibot_stars_charged_total", "kind")
    refunded = moved(before, after, "aibot_stars_refunded_total", "kind")
    assert charged == await ledger_by_kind(app, "charge:")
    assert refunded == await ledger_by_kind(app, "refund:")
    assert refunded == {("text_to_image",): 2, ("text_to_speech",): 5}  # a failure and a cancel; a failure
    balance = 500 - sum(charged.values()) + sum(refunded.values())
    assert await balance_and_ledger_sum(app) == (balance, balance)

    # Provider calls: every create the fake accepted, the busy answer as a typed rate limit, and the
    # Bot API's 429 and deliveries as the fake Telegram saw them.
    calls = moved(before, after, "aibot_provider_calls_total", "provider", "operation")
    assert calls[("replicate", "create")] == replicate.create_count() == 5
    assert calls[("elevenlabs", "text_to_speech")] == 2
    errors = moved(before, after, "aibot_provider_errors_total", "provider", "operation", "error")
    assert errors[("elevenlabs", "text_to_speech", "ProviderRateLimited")] == 1
    assert errors[("telegram", "sendChatAction", "TelegramRetryAfter")] == 1
    assert moved(before, after, "aibot_provider_rate_limited_total", "provider", "operation") == {
        ("elevenlabs", "text_to_speech"): 1,
        ("telegram", "sendChatAction"): 1,
    }
    assert {key: calls[key] for key in delivered_calls(telegram, calls_before)} == delivered_calls(
        telegram, calls_before
    )
    latencies = moved(before, after, "aibot_provider_call_seconds_count", "provider", "operation")
    assert latencies[("replicate", "create")] == 5

    # The app's gauges, read at the scrape.
    assert after.value("aibot_breaker_state", state="closed") == 1
    assert after.value("aibot_breaker_state", state="open") == 0
    assert after.value("aibot_queue_depth") is not None
    assert after.value("aibot_metrics_source_up", source="database") == 1
    assert after.value("aibot_generations_running", plan="B") == 0

    # Bounded labels: no user, prompt, username or generation anywhere.
    forbidden = [str(USER), "fox", *PROMPTS, CANCELED_PROMPT, WAITING_PROMPT, BUSY_TEXT]
    forbidden += [g.id for g in generations]
    leaked = [value for value in after.label_values() for word in forbidden if word in value]
    assert leaked == []


async def test_a_stars_payment_counts_as_stars_bought_once(
    make_app: AppFactory, http: aiohttp.ClientSession, telegram: FakeTelegram
) -> None:
    app = await make_app(new_user_bonus=0)
    before = await scrape(http, f"{base(app)}/metrics")
    chat = Chat(telegram)
    await chat.ask("/start", "Your balance: 0 ⭐")
    payment = await pay(chat, await buy(chat))
    await chat.reply("Payment received: +100 stars")
    telegram.push_update(chat.token, payment.update or {})  # delivered again: credited once
    await chat.ask("/balance", "Your balance: 100 ⭐")
    after = await scrape(http, f"{base(app)}/metrics")
    assert moved(before, after, "aibot_stars_bought_total") == {(): 100}
    assert await balance_and_ledger_sum(app) == (100, 100)


async def test_metrics_token_is_required_when_set(make_app: AppFactory, http: aiohttp.ClientSession) -> None:
    app = await make_app(metrics_token="scrape-secret")
    url = f"{base(app)}/metrics"
    for headers in ({}, {"Authorization": "Bearer wrong"}, AUTH, {"Authorization": "scrape-secret"}):
        async with http.get(url, headers=headers) as response:
            assert response.status == 401
            assert response.headers["WWW-Authenticate"] == "Bearer"
            assert "aibot_" not in await response.text()
    scraped = await scrape(http, url, {"Authorization": "Bearer scrape-secret"})
    assert scraped.value("aibot_metrics_source_up", source="database") == 1


async def test_a_hung_redis_leaves_its_gauges_out_and_the_scrape_answers(
    make_app: AppFactory, http: aiohttp.ClientSession, redis_proxy: TcpProxy, redis_url: str
) -> None:
    database = redis_url.rsplit("/", 1)[1]
    app = await make_app(redis_url=f"{redis_proxy.url}/{database}", redis_timeout=0.5)
    url = f"{base(app)}/metrics"
    assert (await scrape(http, url)).value("aibot_metrics_source_up", source="redis") == 1
    await redis_proxy.hang()  # accepts connections, answers nothing
    loop = asyncio.get_running_loop()
    started = loop.time()
    scraped = await scrape(http, url)
    assert loop.time() - started < 5  # bounded by REDIS_TIMEOUT, not by Redis
    assert scraped.value("aibot_metrics_source_up", source="redis") == 0
    assert scraped.value("aibot_queue_depth") is None
    assert scraped.value("aibot_generations_running", plan="A") is None
    assert scraped.value("aibot_generations_running", plan="B") == 0
    assert scraped.value("aibot_metrics_source_up", source="database") == 1
    await redis_proxy.restore()


async def test_the_worker_serves_metrics_on_its_probes_port(
    make_app: AppFactory,
    http: aiohttp.ClientSession,
    telegram: FakeTelegram,
    replicate: FakeReplicate,
    elevenlabs: FakeElevenLabs,
    sqlite_url: str,
    redis_url: str,
) -> None:
    """`aibot run` only enqueues; an `aibot worker` runs the job and serves what it counted (both are
    in this one process here, so they share one registry: the worker's answer is what is checked)."""
    app = await make_app(redis_url=redis_url, embedded_worker=False)
    settings = make_settings(
        sqlite_url,
        telegram,
        replicate,
        elevenlabs,
        redis_url=redis_url,
        worker_http_port=closed_port(),
        metrics_token="scrape-secret",
    )
    worker = StandaloneWorker(settings)
    await worker.start()
    try:
        url = f"http://127.0.0.1:{worker.probes_port}/metrics"
        async with http.get(url) as response:
            assert response.status == 401
        token = {"Authorization": "Bearer scrape-secret"}
        before = await scrape(http, url, token)
        assert (await post(http, app, "text-to-image", {"prompt": "a quiet harbour"}))["plan"] == "A"
        [generation] = await all_settled(app, 1)
        assert (generation.plan, generation.status) == ("A", "done")
        after = await scrape(http, url, token)
        assert moved(before, after, "aibot_generations_total", "kind", "model", "plan", "status") == {
            ("text_to_image", "flux-schnell", "A", "done"): 1
        }
        assert moved(before, after, "aibot_generation_queue_wait_seconds_count", "plan") == {("A",): 1}
        # The worker has no dispatcher: the app's gauges are not its to tell.
        assert {"aibot_generations", "aibot_provider_calls"} <= after.families
        assert "aibot_metrics_source_up" not in after.families
    finally:
        await worker.stop()
