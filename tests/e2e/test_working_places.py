"""The runs working at once in a process (generation/places.py, paced by generation/pace.py): a run
holds a place while it works and gives it up while it only waits for its provider's job, so a long
job never keeps the next generation from starting. A run waiting for a place holds its slots all the
while, and nothing is lost or paid twice by the waits. Plan A's jobs take the same places as Plan B's
runs of their process."""

from __future__ import annotations

import asyncio
import contextlib
from typing import cast

from app import App
from bot.telegram.turns import TurnTakingDispatcher
from fallback.inline import InlineRunner
from generation.places import Places
from tests.conftest import AppFactory, wait_until
from tests.e2e.helpers import Chat, all_settled, balance_and_ledger_sum, generations_of
from tests.fakes.replicate import FakeReplicate, Outcome
from tests.fakes.telegram import FakeTelegram

FLUX = "black-forest-labs/flux-schnell"


async def test_a_run_waiting_for_its_provider_lets_another_work_meanwhile(
    make_app: AppFactory, telegram: FakeTelegram, replicate: FakeReplicate
) -> None:
    app = await make_app()
    runner = _one_place(app)
    held = asyncio.Event()
    replicate.script(FLUX, Outcome(hold=held), Outcome())
    chat = Chat(telegram)
    chat.send("/start")
    await chat.reply("Hi,")

    chat.send("/image 1 a long one")
    await replicate.wait_for_create(1)
    chat.send("/image 1 a short one")
    # The second is created, delivered and settled while the first still waits on its provider.
    await replicate.wait_for_create(2)
    await wait_until(lambda: _statuses_are(app, ["running", "done"]))
    assert runner.services.working.size == 1

    held.set()
    settled = await all_settled(app, 2)
    assert [generation.status for generation in settled] == ["done", "done"]
    assert runner.services.working.taken == 0
    assert await balance_and_ledger_sum(app) == (8, 8)


async def test_runs_beyond_the_places_wait_their_turn_holding_their_slots(
    make_app: AppFactory, telegram: FakeTelegram, replicate: FakeReplicate
) -> None:
    app = await make_app(limit_per_user=3)
    runner = _one_place(app)
    chat = Chat(telegram)
    chat.send("/start")
    await chat.reply("Hi,")

    async with runner.services.working.held():  # every place taken: the runs recorded now wait for one
        for prompt in ("one", "two", "three"):
            chat.send(f"/image 1 {prompt}")
        await wait_until(lambda: _waiting(runner, 3))
        # In flight, their slots held (what LIMIT_* count), nothing created yet.
        assert (runner.in_flight().running, runner.in_flight().waiting) == (3, 0)
        await asyncio.sleep(0.2)
        assert replicate.create_count(FLUX) == 0

    settled = await all_settled(app, 3)
    assert [generation.status for generation in settled] == ["done"] * 3
    assert (runner.services.working.taken, runner.services.working.waiting) == (0, 0)
    assert await balance_and_ledger_sum(app) == (7, 7)


async def test_plan_a_jobs_take_the_places_of_their_process(
    make_app: AppFactory, telegram: FakeTelegram, replicate: FakeReplicate, redis_url: str
) -> None:
    app = await make_app(redis_url=redis_url, limit_per_user=3)
    assert app.services is not None and app.worker is not None
    working = _one_place(app).services.working
    assert app.worker.services.working is working  # one set of places for both plans
    chat = Chat(telegram)
    chat.send("/start")
    await chat.reply("Hi,")

    async with working.held():  # every place taken: the jobs picked up now wait for one
        for prompt in ("one", "two"):
            chat.send(f"/image 1 {prompt}")
        await wait_until(lambda: _waiting_places(working, 2))
        await asyncio.sleep(0.2)
        assert replicate.create_count(FLUX) == 0

    settled = await all_settled(app, 2)
    assert [(generation.plan, generation.status) for generation in settled] == [("A", "done")] * 2
    assert (working.taken, working.waiting) == (0, 0)
    assert await balance_and_ledger_sum(app) == (8, 8)


def _one_place(app: App) -> InlineRunner:
    """The process's runner with one place, which the pace may not add to."""
    runner = app.inline
    assert runner is not None
    runner.services.pace.most = 1
    runner.services.working.resize(1)
    return runner


async def _waiting(runner: InlineRunner, count: int) -> bool:
    return await _waiting_places(runner.services.working, count)


async def _waiting_places(places: Places, count: int) -> bool:
    return places.waiting == count


async def _statuses_are(app: App, statuses: list[str]) -> bool:
    return [generation.status for generation in await generations_of(app)] == statuses


async def test_the_database_is_told_when_the_process_has_nothing_else_to_do(make_app: AppFactory) -> None:
    """With one run working or one request being accepted at most, the process is quiet: the database
    then does its I/O in the loop's thread (generation/store.py, `Database.quiet`)."""
    app = await make_app()
    assert app.services is not None
    services = app.services
    quiet = services.db.quiet
    assert quiet()
    async with services.working.held():
        assert quiet()  # one run working
        async with services.intake_first.accepting_one():
            assert quiet()  # and one request
            async with services.intake_first.accepting_one():
                assert not quiet()  # two requests at once
        async with services.working.held():
            assert not quiet()  # two runs
    turns = cast(TurnTakingDispatcher, app.bot_dispatcher).turns
    async with turns.turn():
        assert quiet()  # one Telegram update being handled
        async with turns.turn():
            assert not quiet()  # two
    assert app.readiness is not None
    requests = [asyncio.create_task(asyncio.sleep(0)) for _ in range(2)]
    app.readiness.taking_work.update(requests)
    assert not quiet()  # two HTTP requests that take work
    app.readiness.taking_work.clear()
    await asyncio.gather(*requests)
    places = services.pace.most = services.working.size  # the pace must not add a place meanwhile
    async with contextlib.AsyncExitStack() as holding:
        for _ in range(places):
            await holding.enter_async_context(services.working.held())
        waiting = asyncio.create_task(services.working.take())
        await wait_until(lambda: _waiting_places(services.working, 1))
        assert not quiet()  # a run waiting for a place
    await waiting
    services.working.give_back()
    assert quiet()
