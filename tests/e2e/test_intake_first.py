"""Requests being accepted go before runs starting (generation/intake_first.py): a generation recorded
while another request is still being accepted starts its run, on either plan, only once that request
is in, or after the longest wait; nothing is lost or paid twice by the wait."""

from __future__ import annotations

import asyncio
import time

import pytest

from app import App
from generation.intake_first import ACCEPTING_AT_ONCE, RELEASED_AT_ONCE, IntakeFirst
from tests.conftest import AppFactory, wait_until
from tests.e2e.helpers import Chat, all_settled, balance_and_ledger_sum, generations_of
from tests.fakes.replicate import FakeReplicate
from tests.fakes.telegram import FakeTelegram

FLUX = "black-forest-labs/flux-schnell"


@pytest.mark.parametrize("plan", ["B", "A"])
async def test_a_run_waits_until_requests_being_accepted_are_in(
    make_app: AppFactory, telegram: FakeTelegram, replicate: FakeReplicate, redis_url: str, plan: str
) -> None:
    app = await make_app(redis_url=redis_url) if plan == "A" else await make_app()
    assert app.services is not None
    chat = Chat(telegram)
    chat.send("/start")
    await chat.reply("Hi,")

    async with app.services.intake_first.accepting_one():  # another request, still being accepted
        chat.send("/image 1 a fox")
        await wait_until(lambda: _any_recorded(app))
        [recorded] = await generations_of(app)
        assert recorded.plan == plan
        await asyncio.sleep(0.3)  # time enough to reach the provider, were it not waiting
        assert replicate.create_count(FLUX) == 0

    await replicate.wait_for_create(1)
    [settled] = await all_settled(app, 1)
    assert (settled.status, settled.attempts) == ("done", 1)
    assert await balance_and_ledger_sum(app) == (9, 9)


async def _any_recorded(app: App) -> bool:
    return bool(await generations_of(app))


async def test_waiting_for_accepting_to_end_is_bounded() -> None:
    gate = IntakeFirst(longest_wait=0.2)
    await asyncio.wait_for(gate.wait_turn(), 0.05)  # nothing being accepted: no wait at all

    async with gate.accepting_one():
        started = time.monotonic()
        await gate.wait_turn()  # accepting never ends here: the run goes on after the longest wait
        assert time.monotonic() - started >= 0.19

    async with gate.accepting_one():
        waiter = asyncio.ensure_future(gate.wait_turn())
        async with gate.accepting_one():
            await asyncio.sleep(0.05)
        assert not waiter.done()  # one of two requests is in: still waiting
    await asyncio.wait_for(waiter, 0.05)  # both in: the run starts at once
    assert gate.accepting == 0


async def test_requests_are_recorded_a_few_at_a_time_and_all_counted_meanwhile() -> None:
    gate = IntakeFirst()
    inside = 0
    most_inside = 0
    release = asyncio.Event()

    async def accept() -> None:
        nonlocal inside, most_inside
        async with gate.accepting_one():
            inside += 1
            most_inside = max(most_inside, inside)
            await release.wait()
            inside -= 1

    requests = [asyncio.ensure_future(accept()) for _ in range(ACCEPTING_AT_ONCE * 3)]
    await asyncio.sleep(0.05)
    assert most_inside == ACCEPTING_AT_ONCE
    assert gate.accepting == ACCEPTING_AT_ONCE * 3  # those waiting their turn hold runs back too
    release.set()
    await asyncio.gather(*requests)
    assert gate.accepting == 0


async def test_runs_that_waited_go_on_a_few_per_turn_of_the_loop_in_their_order() -> None:
    gate = IntakeFirst()
    started: list[int] = []

    async def run(number: int) -> None:
        await gate.wait_turn()
        started.append(number)

    count = RELEASED_AT_ONCE * 3 + 5
    async with gate.accepting_one():
        runs = [asyncio.ensure_future(run(number)) for number in range(count)]
        await asyncio.sleep(0.05)
        assert started == [] and gate.waiting == count
    turns = 0
    while len(started) < count:
        before = len(started)
        await asyncio.sleep(0)
        assert len(started) - before <= RELEASED_AT_ONCE  # never all of them in one turn
        turns += 1
    assert turns >= 4
    assert started == list(range(count))
    await asyncio.gather(*runs)

    # A request coming in while they are let go holds the rest back until it is in; a run that
    # comes meanwhile goes after those that waited before it.
    started.clear()
    async with gate.accepting_one():
        runs = [asyncio.ensure_future(run(number)) for number in range(count)]
        await asyncio.sleep(0.05)
    for _ in range(3):  # the release's turn of the loop, then the first runs' own
        await asyncio.sleep(0)
    assert started
    async with gate.accepting_one():
        held_at = len(started)
        late = asyncio.ensure_future(run(count))
        await asyncio.sleep(0.05)
        assert held_at < count and len(started) <= held_at + RELEASED_AT_ONCE
    await asyncio.gather(*runs, late)
    assert started == list(range(count + 1))


async def test_a_cancelled_waiting_run_is_skipped() -> None:
    gate = IntakeFirst()
    async with gate.accepting_one():
        first = asyncio.ensure_future(gate.wait_turn())
        second = asyncio.ensure_future(gate.wait_turn())
        await asyncio.sleep(0.01)
        first.cancel()
    await asyncio.wait_for(second, 0.5)
    assert first.cancelled() and gate.waiting == 0
