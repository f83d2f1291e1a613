"""Places a few at a time may hold (generation/places.py) and the pace that sizes Plan B's runs
working at once by how late the event loop answers (generation/pace.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from typing import Any

import pytest

from generation import pace as pace_module
from generation.pace import CUT_EVERY, LATE, Pace
from generation.places import Place, Places


async def _started(coroutine: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
    """Started, and run up to its first wait."""
    task = asyncio.ensure_future(coroutine)
    await asyncio.sleep(0)
    return task


async def test_a_place_given_back_goes_to_the_first_waiter_and_first_ones_go_before() -> None:
    places = Places(2)
    await places.take()
    await places.take()
    order: list[str] = []

    async def wait(name: str, first: bool) -> None:
        await places.take(first)
        order.append(name)

    early = await _started(wait("early", first=False))
    late_but_first = await _started(wait("late but first", first=True))
    assert (places.taken, places.waiting) == (2, 2)

    places.give_back()
    await asyncio.sleep(0)
    assert order == ["late but first"] and places.taken == 2  # handed over, never free
    places.give_back()
    await asyncio.gather(early, late_but_first)
    assert order == ["late but first", "early"] and (places.taken, places.waiting) == (2, 0)


async def test_a_waiter_cancelled_is_skipped_and_one_cancelled_as_it_got_the_place_passes_it_on() -> None:
    places = Places(1)
    await places.take()
    gone = await _started(places.take())
    handed = await _started(places.take())
    last = await _started(places.take())
    gone.cancel()
    await asyncio.sleep(0)

    places.give_back()  # skips the cancelled one: `handed` gets it...
    handed.cancel()  # ...but is cancelled before it could run: the place goes on to `last`
    await asyncio.gather(handed, return_exceptions=True)
    await asyncio.wait_for(last, 1)
    assert (places.taken, places.waiting) == (1, 0)


async def test_more_places_go_to_waiters_at_once_and_fewer_take_none_back() -> None:
    places = Places(1)
    await places.take()
    waiters = [await _started(places.take()) for _ in range(3)]
    places.resize(3)
    await asyncio.sleep(0)
    assert sum(waiter.done() for waiter in waiters) == 2 and places.taken == 3

    places.resize(1)  # holders keep theirs: the last waiter gets one only once two are back
    places.give_back()
    await asyncio.sleep(0)
    assert not waiters[2].done() and places.taken == 2
    places.give_back()
    places.give_back()
    await asyncio.wait_for(waiters[2], 1)
    assert places.taken == 1


async def test_a_place_given_up_while_waiting_is_taken_back_before_newcomers() -> None:
    places = Places(1)
    back = asyncio.Event()
    order: list[str] = []

    async def holder() -> None:
        async with Place(places) as place:
            async with place.given_up():  # waits for its provider: someone else may work
                await back.wait()
            order.append("holder")
        order.append("holder done")

    async def newcomer() -> None:
        async with places.held():
            order.append("newcomer")

    task = await _started(holder())
    assert places.taken == 0
    await places.take()  # another run works meanwhile
    arrived = await _started(newcomer())  # and a newcomer asks before the holder comes back
    back.set()
    await asyncio.sleep(0)
    assert places.waiting == 2
    places.give_back()
    await asyncio.gather(task, arrived)
    assert order == ["holder", "holder done", "newcomer"]
    assert places.taken == 0


async def test_a_holder_cancelled_while_taking_its_place_back_gives_back_nothing() -> None:
    places = Places(1)

    async def holder(back: asyncio.Event) -> None:
        async with Place(places) as place, place.given_up():
            await back.wait()

    back = asyncio.Event()
    task = await _started(holder(back))
    await places.take()  # someone else has it now
    back.set()
    await asyncio.sleep(0)
    task.cancel()  # while it waits to take its place back
    await asyncio.gather(task, return_exceptions=True)
    assert places.taken == 1  # the other one's; not given back a second time
    places.give_back()
    assert places.taken == 0


async def test_a_holder_cancelled_while_its_place_is_given_up_does_not_wait_for_one() -> None:
    places = Places(1)
    waiting = asyncio.Event()

    async def holder() -> None:
        async with Place(places) as place, place.given_up():
            waiting.set()
            await asyncio.sleep(60)  # its provider's job

    task = await _started(holder())
    await waiting.wait()
    await places.take()  # every place taken by others
    task.cancel()
    await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), 1)
    assert places.taken == 1


def test_a_late_loop_cuts_places_by_a_quarter_and_no_lower_than_the_fewest() -> None:
    places = Places(32)
    pace = Pace(places, most=100, fewest=4)
    pace.adjust(LATE * 3, now=10.0)
    assert places.size == 24
    pace.adjust(LATE * 3, now=10.0 + CUT_EVERY / 2)  # too soon: the last cut has not shown yet
    assert places.size == 24
    for step in range(1, 20):
        pace.adjust(LATE * 3, now=10.0 + step * CUT_EVERY)
    assert places.size == 4


async def test_a_loop_on_time_adds_places_only_while_runs_wait_for_one() -> None:
    places = Places(8)
    pace = Pace(places, most=10)
    pace.adjust(0.0, now=1.0)
    assert places.size == 8  # nobody waits: nothing to add
    for _ in range(8):
        await places.take()
    waiting = await _started(places.take())
    pace.adjust(LATE / 4, now=2.0)
    assert places.size == 9
    await asyncio.wait_for(waiting, 1)
    waiting = await _started(places.take())
    pace.adjust(0.0, now=3.0)
    pace.adjust(0.0, now=4.0)
    assert places.size == 10  # never more than `most`
    pace.adjust(LATE, now=5.0)  # neither late nor well on time: as it is
    assert places.size == 10
    waiting.cancel()


async def test_the_timer_reads_a_blocked_loop_and_stops_once_nothing_holds_a_place(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(pace_module, "EVERY", 0.005)
    places = Places(16)
    pace = Pace(places, most=100)
    assert pace._timer is None
    await places.take()  # asking for a place starts the timer
    assert pace._timer is not None
    await asyncio.sleep(0.001)
    time.sleep(0.05)  # noqa: ASYNC251 - a turn of the loop that takes 50 ms, on purpose
    await asyncio.sleep(0.02)
    assert places.size == 12
    places.give_back()
    await asyncio.sleep(0.03)
    assert pace._timer is None  # nothing held or waited for: no timer
    await places.take()  # a run back from its provider's wait: timed again
    assert pace._timer is not None
    pace.close()
    assert pace._timer is None
