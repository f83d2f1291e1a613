"""A real `aibot worker` process killed with SIGKILL at each point of a pipeline; once a worker runs
again, the generation ends with exactly one prediction, one charge and one delivery."""

from __future__ import annotations

import asyncio
import signal

import pytest
from sqlalchemy import select

from app import App
from generation.store import Step
from tests.conftest import AppFactory, wait_until
from tests.e2e.helpers import Chat, all_settled, balance_and_ledger_sum, generations_of
from tests.fakes.replicate import FakeReplicate, Outcome
from tests.fakes.telegram import FakeTelegram
from tests.processes import Spawn, environment, logs_of

pytestmark = pytest.mark.slow

FLUX = "black-forest-labs/flux-schnell"
# Short job timeouts keep arq's in-progress key (job timeout + 10 s) short: a killed worker's job is
# handed to the next worker once that key expires.
JOB_TIMEOUT = "3"


async def journaled(app: App, name: str) -> bool:
    assert app.services is not None
    async with app.services.db.sessions() as session:
        return (await session.scalar(select(Step.name).where(Step.name == name))) is not None


@pytest.mark.parametrize(
    "point", ["before_provider_call", "after_provider_call", "while_waiting", "during_delivery"]
)
async def test_a_worker_killed_at_any_point_leaves_one_prediction_one_charge_one_delivery(
    point: str,
    make_app: AppFactory,
    spawn: Spawn,
    telegram: FakeTelegram,
    replicate: FakeReplicate,
    postgres_url: str,
    redis_url: str,
) -> None:
    app = await make_app(database_url=postgres_url, redis_url=redis_url, embedded_worker=False)
    env = environment(
        telegram,
        replicate,
        DATABASE_URL=postgres_url,
        REDIS_URL=redis_url,
        JOB_TIMEOUT=JOB_TIMEOUT,
        LONG_WAIT_POLL="0.2",
        RECONCILE_EVERY="1",
        RECONCILE_GRACE="0.5",
        LEASE_SECONDS="1.5",  # a killed worker's generation is taken over 1.5 s after it died
    )
    release = asyncio.Event()
    status_hold = None
    if point == "before_provider_call":
        status_hold = telegram.hold("sendMessage")  # the "working" message comes before the create
    elif point == "after_provider_call":
        replicate.hold_create_answers = release  # the prediction exists; the worker never hears of it
    elif point == "while_waiting":
        replicate.script(FLUX, Outcome(hold=release))
    else:
        replicate.hold_downloads = release  # fetching the images for delivery

    chat = Chat(telegram)
    chat.send("/image 2 survive a crash")
    first = await spawn("worker", env)
    if status_hold is not None:
        await asyncio.wait_for(status_hold.arrived.wait(), 30)
    elif point == "after_provider_call":
        await replicate.wait_for_create(1, timeout=30)
    elif point == "while_waiting":
        await wait_until(lambda: journaled(app, "prediction:id"), timeout=30)
    else:
        await asyncio.wait_for(replicate.download_started.wait(), 30)

    first.send_signal(signal.SIGKILL)
    await first.wait()
    release.set()
    if status_hold is not None:
        status_hold.release.set()
    replicate.hold_create_answers = None
    replicate.hold_downloads = None

    second = await spawn("worker", env)
    try:
        await chat.reply("Charged 2 ⭐. Balance: 8 ⭐", timeout=60)
    except AssertionError:
        second.kill()
        await second.wait()
        raise AssertionError(logs_of(second)[-4000:]) from None
    [generation] = await all_settled(app, 1)
    assert (generation.plan, generation.status) == ("A", "done")
    assert replicate.create_count() == 1
    assert len(chat.albums()) == 1
    assert sum("Charged" in text for text in chat.texts()) == 1
    assert await balance_and_ledger_sum(app) == (8, 8)
    assert len(await generations_of(app)) == 1
