"""Plan B's in-process limits: a freed slot goes to the first in line, who knows its place."""

from __future__ import annotations

import asyncio

from fallback.inline import KeyedLimits


async def test_waiters_get_slots_in_order_and_know_their_place() -> None:
    limits = KeyedLimits()
    order: list[str] = []
    release = {name: asyncio.Event() for name in "abcde"}

    async def run(name: str) -> None:
        async with limits.hold("provider:replicate", 2, name):
            order.append(name)
            await release[name].wait()

    tasks = {}
    for name in "abcde":
        tasks[name] = asyncio.create_task(run(name))
        await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert order == ["a", "b"] and limits.is_full("provider:replicate")
    assert [limits.place("provider:replicate", name) for name in "abcde"] == [None, None, 1, 2, 3]

    tasks["d"].cancel()  # one in the middle gives up: those behind it move up
    await asyncio.sleep(0)
    assert limits.place("provider:replicate", "e") == 2

    release["a"].set()
    await asyncio.sleep(0.01)
    assert order == ["a", "b", "c"]
    assert limits.place("provider:replicate", "e") == 1
    for name in "bce":
        release[name].set()
    await asyncio.gather(*(tasks[name] for name in "abce"))
    assert order == ["a", "b", "c", "e"]
    assert not limits.is_full("provider:replicate")
    assert limits._slots == {}  # a key nobody holds or waits for is forgotten


async def test_a_waiter_cancelled_as_its_turn_came_passes_the_slot_on() -> None:
    limits = KeyedLimits()
    held = asyncio.Event()
    done = asyncio.Event()

    async def holder() -> None:
        async with limits.hold("global", 1, "first"):
            held.set()
            await done.wait()

    first = asyncio.create_task(holder())
    await held.wait()
    second = asyncio.create_task(limits.hold("global", 1, "second").__aenter__())
    third_entered = asyncio.Event()

    async def third() -> None:
        async with limits.hold("global", 1, "third"):
            third_entered.set()

    third_task = asyncio.create_task(third())
    await asyncio.sleep(0)
    done.set()
    await asyncio.sleep(0)  # the first leaves: its slot is handed to "second"...
    second.cancel()  # ...which is cancelled before it could run
    await asyncio.gather(first, second, return_exceptions=True)
    await asyncio.wait_for(third_entered.wait(), 1)  # the slot went on to "third"
    await third_task
    assert limits._slots == {}


async def test_slots_taken_at_once_are_all_or_none_and_come_back() -> None:
    limits = KeyedLimits()
    slots = [("user:7", 1), ("global", 2)]
    assert limits.take_now(slots)  # room in both: taken without waiting
    assert limits.is_full("user:7") and not limits.is_full("global")
    assert not limits.take_now(slots)  # the user's one slot is taken: nothing is taken
    assert not limits.is_full("global")
    assert limits.take_now([("user:8", 1), ("global", 2)])
    assert limits.is_full("global")

    # Someone waiting for a slot is not overtaken by a slot taken at once.
    waiter_got_it = asyncio.Event()

    async def wait_in_line() -> None:
        async with limits.hold("global", 2, "waiter"):
            waiter_got_it.set()

    waiter = asyncio.create_task(wait_in_line())
    await asyncio.sleep(0)
    limits.give_back(slots)  # the first taker is done: its global slot goes to the one waiting
    await asyncio.wait_for(waiter_got_it.wait(), 1)
    await waiter
    assert not limits.is_full("user:7")
    limits.give_back([("user:8", 1), ("global", 2)])
    assert not limits.is_full("global") and limits.waiting() == 0
