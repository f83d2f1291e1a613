"""Concurrency: on Plan A long waits hold no worker; on both plans limits make generations wait
their turn without failing."""

from __future__ import annotations

import asyncio

import pytest

from jobs.limits import ConcurrencyLimiter
from tests.conftest import AppFactory
from tests.e2e.helpers import Chat, all_settled, generation_ids_passed_to
from tests.fakes.replicate import FakeReplicate, Outcome
from tests.fakes.telegram import FakeTelegram

FLUX = "black-forest-labs/flux-schnell"


async def test_one_worker_slot_keeps_many_generations_in_flight(
    make_app: AppFactory, telegram: FakeTelegram, replicate: FakeReplicate, redis_url: str
) -> None:
    """With a single worker slot, eight slow predictions are all created and awaited together: a
    generation waiting on the provider gives its slot back (deferred retry) instead of holding it."""
    await make_app(redis_url=redis_url, worker_max_jobs=1, job_wait_budget=0.1, long_wait_poll=0.2)
    hold = asyncio.Event()
    replicate.script(FLUX, *[Outcome(hold=hold) for _ in range(8)])
    chats = [Chat(telegram, user_id=5000 + index) for index in range(8)]
    for chat in chats:
        chat.send("/image patience")
    await replicate.wait_for_create(8, timeout=20)  # all in flight at once, through one slot
    hold.set()
    for chat in chats:
        await chat.reply("Charged 1 ⭐", timeout=20)
    assert replicate.create_count() == 8


async def test_a_user_over_the_limit_waits_without_failing(
    make_app: AppFactory, telegram: FakeTelegram, replicate: FakeReplicate, redis_url: str
) -> None:
    app = await make_app(redis_url=redis_url, limit_per_user=2, job_wait_budget=0.1, long_wait_poll=0.2)
    hold = asyncio.Event()
    replicate.script(FLUX, Outcome(hold=hold), Outcome(hold=hold))  # later creates finish at once
    chat = Chat(telegram)
    for index in range(3):
        chat.send(f"/image number {index}")
    await replicate.wait_for_create(2, timeout=20)
    other = Chat(telegram, user_id=6001)  # another user is not held up by the first one's limit
    other.send("/image someone else")
    await other.reply("Charged 1 ⭐", timeout=20)
    assert replicate.create_count(FLUX) == 3  # 2 of the first user + the other user's
    hold.set()  # the first two finish, the third gets its turn
    await replicate.wait_for_create(4, timeout=20)
    generations = await all_settled(app, 4, timeout=30)
    assert [g.status for g in generations] == ["done"] * 4
    assert all(g.failures == 0 for g in generations)


async def test_plan_b_keeps_the_per_user_limit_too(
    make_app: AppFactory, telegram: FakeTelegram, replicate: FakeReplicate
) -> None:
    app = await make_app(limit_per_user=2)  # no Redis: Plan B
    hold = asyncio.Event()
    replicate.script(FLUX, Outcome(hold=hold), Outcome(hold=hold))
    chat = Chat(telegram)
    for index in range(3):
        chat.send(f"/image inline {index}")
    await replicate.wait_for_create(2)
    other = Chat(telegram, user_id=6002)
    other.send("/image not held up")
    await other.reply("Charged 1 ⭐", timeout=20)
    assert replicate.create_count(FLUX) == 3  # the first user's third waits for a free slot
    hold.set()
    generations = await all_settled(app, 4, timeout=30)
    assert [g.status for g in generations] == ["done"] * 4 and {g.plan for g in generations} == {"B"}
    assert replicate.create_count(FLUX) == 4


async def test_plan_a_waiters_cost_no_polling_and_are_served_in_order(
    make_app: AppFactory,
    telegram: FakeTelegram,
    replicate: FakeReplicate,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One provider slot, eight users: seven wait in the provider's line. While they wait nobody
    looks at the limiter again (no polling); each slot freed goes to the next recorded."""
    # Every look at the limiter, a run's or the one an enqueue makes for the job it takes.
    looks = generation_ids_passed_to(monkeypatch, ConcurrencyLimiter, "acquire_call")
    app = await make_app(redis_url=redis_url, limit_replicate=1, job_wait_budget=0.1, long_wait_poll=0.2)
    holds = [asyncio.Event() for _ in range(8)]
    replicate.script(FLUX, *[Outcome(hold=hold) for hold in holds])
    chats = [Chat(telegram, user_id=7000 + index) for index in range(8)]
    chats[0].send("/image first")
    await replicate.wait_for_create(1, timeout=20)
    for index, chat in enumerate(chats[1:], start=2):
        chat.send(f"/image number {index}")  # recorded one after another: the line's order
        await chat.reply(f"Place in line: {index - 1}", timeout=20)

    first = looks[0]  # the running one, which looks again each time it comes back to the provider
    waiters_looks = len([look for look in looks if look != first])
    assert waiters_looks == 7
    await asyncio.sleep(3)  # the old limiter had each waiter look again about every second
    assert len([look for look in looks if look != first]) == waiters_looks
    assert replicate.create_count(FLUX) == 1

    for index, hold in enumerate(holds):
        hold.set()
        await replicate.wait_for_create(min(index + 2, 8), timeout=20)
    generations = await all_settled(app, 8, timeout=30)
    assert [g.status for g in generations] == ["done"] * 8
    prompts = [create["input"]["prompt"] for create in replicate.creates]
    assert prompts == ["first", *[f"number {index}" for index in range(2, 9)]]
