"""The SQLite write gate: one writer at a time in a process, urgent ones first, cancellation-safe."""

import asyncio

from generation.store import WriteGate


async def test_writers_take_turns_urgent_first_then_in_arrival_order() -> None:
    gate = WriteGate()
    order: list[str] = []
    first_in = asyncio.Event()
    release_first = asyncio.Event()

    async def writer(name: str, urgent: bool, hold: asyncio.Event | None = None) -> None:
        async with gate.turn(urgent):
            order.append(name)
            if hold is not None:
                first_in.set()
                await hold.wait()

    first = asyncio.create_task(writer("running-1", False, release_first))
    await first_in.wait()
    others = [
        asyncio.create_task(writer("running-2", False)),
        asyncio.create_task(writer("running-3", False)),
        asyncio.create_task(writer("accept", True)),
    ]
    await asyncio.sleep(0)  # all three are waiting now
    release_first.set()
    await asyncio.gather(first, *others)
    assert order == ["running-1", "accept", "running-2", "running-3"]


async def test_a_cancelled_waiter_does_not_block_the_gate() -> None:
    gate = WriteGate()
    inside = asyncio.Event()
    leave = asyncio.Event()

    async def holder() -> None:
        async with gate.turn(False):
            inside.set()
            await leave.wait()

    holding = asyncio.create_task(holder())
    await inside.wait()

    async def waiter() -> None:
        async with gate.turn(True):
            raise AssertionError("a cancelled waiter never gets in")

    cancelled = asyncio.create_task(waiter())
    await asyncio.sleep(0)
    cancelled.cancel()
    leave.set()
    await holding
    assert cancelled.cancelled()
    async with asyncio.timeout(1):
        async with gate.turn(False):  # free again
            pass
