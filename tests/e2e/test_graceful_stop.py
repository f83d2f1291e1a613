"""Graceful stop: on SIGTERM a process takes no new work, lets running generations finish for up to
DRAIN_TIMEOUT, hands the rest back (a paid call in progress journaled first, leases released, Plan A
jobs put back in the queue), and exits. Plus the orchestrator's probes, /livez and /readyz."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as aioredis
from arq.constants import default_queue_name, in_progress_key_prefix

from app import App
from generation.store import GenerationStatus
from tests.conftest import API_TOKEN, AppFactory, closed_port, make_settings
from tests.e2e.helpers import Chat, all_settled, balance_and_ledger_sum, generations_of, journal_of
from tests.fakes.elevenlabs import FakeElevenLabs
from tests.fakes.replicate import FakeReplicate, Outcome
from tests.fakes.telegram import FakeTelegram
from tests.processes import Spawn, environment, logs_of, stop

FLUX = "black-forest-labs/flux-schnell"
DRAIN = 3.0
# Beyond the drain: interrupted work ends (a paid call finishes first) and everything closes.
EXIT_MARGIN = 4.5


async def get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        return response.status, await response.text()


async def until_answers(url: str, status: int, process: asyncio.subprocess.Process, timeout: float) -> str:
    """The body of the first answer of `url` with `status` (a process that is starting or changing
    state answers otherwise, or not at all, meanwhile)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.returncode is not None:
            raise AssertionError(f"exited before {url} answered {status}:\n" + logs_of(process)[-3000:])
        try:
            answered, body = await get(url)
            if answered == status:
                return body
        except aiohttp.ClientConnectionError:
            pass
        await asyncio.sleep(0.05)
    raise AssertionError(f"{url} did not answer {status} in time:\n" + logs_of(process)[-3000:])


async def until_logged(process: asyncio.subprocess.Process, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while text not in logs_of(process):
        if time.monotonic() > deadline or process.returncode is not None:
            raise AssertionError(f"never logged {text!r}:\n" + logs_of(process)[-3000:])
        await asyncio.sleep(0.02)


async def exits(process: asyncio.subprocess.Process, within: float) -> float:
    """Seconds the process took to exit after this call; it must exit cleanly within `within`."""
    started = time.monotonic()
    try:
        await asyncio.wait_for(process.wait(), timeout=within)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise AssertionError(
            f"still running {within} s after SIGTERM:\n" + logs_of(process)[-4000:]
        ) from None
    assert process.returncode == 0, logs_of(process)[-4000:]
    assert "left running at exit" not in logs_of(process)
    return time.monotonic() - started


@pytest.mark.slow
async def test_a_busy_worker_drains_hands_back_the_rest_and_nothing_is_paid_twice_or_lost(
    make_app: AppFactory,
    spawn: Spawn,
    telegram: FakeTelegram,
    replicate: FakeReplicate,
    postgres_url: str,
    redis_url: str,
) -> None:
    app = await make_app(database_url=postgres_url, redis_url=redis_url, embedded_worker=False)
    probes = closed_port()
    env = environment(
        telegram,
        replicate,
        DATABASE_URL=postgres_url,
        REDIS_URL=redis_url,
        DRAIN_TIMEOUT=str(DRAIN),
        WORKER_HTTP_PORT=str(probes),
        # Generations wait for the provider inside their job (no deferral meanwhile), and leases and
        # the reconciler are slow: a prompt takeover below can only come from the hand-back.
        JOB_WAIT_BUDGET="120",
        JOB_TIMEOUT="150",
    )
    first = await spawn("worker", env)
    base = f"http://127.0.0.1:{probes}"
    assert await until_answers(f"{base}/readyz", 200, first, timeout=60) == "ready"
    assert await get(f"{base}/livez") == (200, "ok")

    ends_in_drain, ends_later, create_answered = asyncio.Event(), asyncio.Event(), asyncio.Event()
    replicate.script(FLUX, Outcome(hold=ends_in_drain), Outcome(hold=ends_later), Outcome(hold=ends_later))
    chats = [Chat(telegram, user_id=2001 + number) for number in range(4)]
    for number, chat in enumerate(chats[:3]):
        chat.send(f"/image busy {number}")
        await replicate.wait_for_create(number + 1, timeout=30)
    # The fourth is paying for its prediction when the drain ends: the create's answer is held.
    replicate.hold_create_answers = create_answered
    chats[3].send("/image busy 3")
    await replicate.wait_for_create(4, timeout=30)
    by_user = {g.user_id: g for g in await generations_of(app)}
    assert len(by_user) == 4

    first.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    assert await until_answers(f"{base}/readyz", 503, first, timeout=DRAIN) == "draining"
    assert await get(f"{base}/livez") == (200, "ok")
    ends_in_drain.set()  # the first one finishes within the drain, on this worker
    await chats[0].reply("Charged 1 ⭐. Balance: 9 ⭐", timeout=DRAIN)
    await until_logged(first, "handing back to the queue", timeout=DRAIN + 1)
    create_answered.set()  # the interrupted create answers: it is journaled before the job stops
    replicate.hold_create_answers = None
    took = await exits(first, within=DRAIN + EXIT_MARGIN)
    assert time.monotonic() - signalled < DRAIN + EXIT_MARGIN, took

    generations = await generations_of(app)
    done = [g for g in generations if g.status == GenerationStatus.done]
    handed_back = [g for g in generations if g.status == GenerationStatus.running]
    assert len(done) == 1 and len(handed_back) == 3
    assert all(g.lease_owner is None and g.lease_expires_at is None for g in handed_back)
    for generation in handed_back:  # each holds its journaled prediction: nothing to pay again
        assert "prediction:id" in await journal_of(app, generation.id)
    client = aioredis.from_url(redis_url)
    try:
        for generation in handed_back:  # back in the queue, no longer marked as running
            assert await client.zscore(default_queue_name, generation.id) is not None
            assert not await client.exists(in_progress_key_prefix + generation.id)
    finally:
        await client.aclose()

    ends_later.set()
    second = await spawn("worker", {**env, "WORKER_HTTP_PORT": "0"})
    for chat in chats[1:]:
        # Leases (30 s) and the reconciler (30 s) are slow: only the hand-back makes this prompt.
        await chat.reply("Charged 1 ⭐. Balance: 9 ⭐", timeout=45)
    settled = await all_settled(app, 4)
    assert [g.status for g in settled] == [GenerationStatus.done] * 4
    assert replicate.create_count() == 4  # no prediction created twice
    for chat in chats:
        assert len(chat.albums()) == 1
        assert sum("Charged" in text for text in chat.texts()) == 1
        assert await balance_and_ledger_sum(app, telegram_id=chat.user_id) == (9, 9)
    logs = await stop(second)
    assert "not_claimed" not in logs  # every handed-back generation was claimed at once


@pytest.mark.slow
async def test_aibot_run_drains_refuses_new_work_and_a_second_signal_cuts_the_drain_short(
    make_app: AppFactory,
    spawn: Spawn,
    telegram: FakeTelegram,
    replicate: FakeReplicate,
    sqlite_url: str,
    tmp_path: Path,
) -> None:
    """Plan B in `aibot run`: while it drains it is not ready and refuses new generations (another
    instance takes them); a second signal ends the drain at once and the interrupted generation
    resumes, on its journaled prediction, at the next start."""
    port = closed_port()
    env = environment(
        telegram,
        replicate,
        HTTP_PORT=str(port),
        DATABASE_URL=sqlite_url,
        REDIS_URL=f"redis://127.0.0.1:{closed_port()}/0",
        DRAIN_TIMEOUT="60",
    )
    process = await spawn("run", env)
    base = f"http://127.0.0.1:{port}"
    assert await until_answers(f"{base}/readyz", 200, process, timeout=60) == "ready"
    assert await get(f"{base}/livez") == (200, "ok")
    held = asyncio.Event()
    replicate.script(FLUX, Outcome(hold=held))
    chat = Chat(telegram)
    await telegram.wait_polling(chat.token, timeout=30)
    chat.send("/image through a stop")
    await replicate.wait_for_create(1, timeout=30)

    process.send_signal(signal.SIGTERM)
    assert await until_answers(f"{base}/readyz", 503, process, timeout=5) == "draining"
    assert await get(f"{base}/livez") == (200, "ok")
    headers = {"Authorization": f"Bearer {API_TOKEN}", "Idempotency-Key": "while-draining"}
    body = {"telegram_id": 77, "bot_name": "image_bot", "prompt": "too late"}
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{base}/api/generation/text-to-image", json=body, headers=headers) as response,
    ):
        assert response.status == 503
        assert response.headers["Retry-After"].isdigit()
    assert process.returncode is None  # still draining: the held generation has 60 s

    process.send_signal(signal.SIGTERM)
    await exits(process, within=EXIT_MARGIN)
    assert "cutting the drain short" in logs_of(process)

    app = await make_app()  # the next start, on the same database
    [generation] = await generations_of(app)
    assert generation.request["prompt"] == "through a stop"  # the refused request recorded nothing
    held.set()
    await chat.reply("Charged 1 ⭐. Balance: 9 ⭐", timeout=30)
    [generation] = await all_settled(app, 1)
    assert (generation.plan, generation.status, generation.attempts) == ("B", "done", 2)
    assert replicate.create_count() == 1  # resumed on the journaled prediction
    assert await balance_and_ledger_sum(app) == (9, 9)


async def test_readiness_follows_the_database_and_the_drain_liveness_only_the_loop(
    telegram: FakeTelegram, replicate: FakeReplicate, elevenlabs: FakeElevenLabs, sqlite_url: str
) -> None:
    app = App(make_settings(sqlite_url, telegram, replicate, elevenlabs))
    await app.start()
    assert app.services is not None
    base = f"http://127.0.0.1:{app.http_port}"
    try:
        assert await get(f"{base}/livez") == (200, "ok")
        assert await get(f"{base}/readyz") == (200, "ready")

        async def not_answering() -> bool:
            return False

        app.readiness.checks["database"] = not_answering
        assert await get(f"{base}/readyz") == (503, "database")
        assert await get(f"{base}/livez") == (200, "ok")
        app.readiness.checks["database"] = app.services.db.ping
        assert await get(f"{base}/readyz") == (200, "ready")

        # While draining: not ready, and a generation asked for now is refused, recording nothing.
        app.readiness.draining = True
        assert await get(f"{base}/readyz") == (503, "draining")
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                f"{base}/api/generation/text-to-image",
                json={"telegram_id": 5, "bot_name": "image_bot", "prompt": "late"},
                headers={"Authorization": f"Bearer {API_TOKEN}"},
            ) as response,
        ):
            assert response.status == 503 and "Retry-After" in response.headers
        assert await generations_of(app) == []
    finally:
        await app.stop()


async def test_a_worker_is_not_ready_while_redis_does_not_answer(
    telegram: FakeTelegram, replicate: FakeReplicate, elevenlabs: FakeElevenLabs, sqlite_url: str
) -> None:
    from app import StandaloneWorker

    settings = make_settings(
        sqlite_url,
        telegram,
        replicate,
        elevenlabs,
        redis_url=f"redis://127.0.0.1:{closed_port()}/0",
        worker_http_port=closed_port(),
    )
    worker = StandaloneWorker(settings)
    await worker.start()
    try:
        base = f"http://127.0.0.1:{worker.probes_port}"
        assert await get(f"{base}/livez") == (200, "ok")
        assert await get(f"{base}/readyz") == (503, "redis")
    finally:
        started = time.monotonic()
        await worker.stop()
        assert time.monotonic() - started < 5  # a worker still trying to reach Redis stops at once
