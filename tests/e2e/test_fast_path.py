"""The fast path of Plan B: a generation whose slots have room is recorded already claimed by the
process's runner, so its run writes nothing of its own before the provider's call; one that must wait
its turn is recorded queued and claimed when its turn comes, as before. On Plan A, the worker `aibot
run` embeds takes the generations its process just enqueued as they were recorded, without reading
them again; what changed meanwhile (a cancellation) is settled by the claim."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import pytest
from arq.constants import in_progress_key_prefix
from sqlalchemy import event, select

import jobs.runner
from app import App
from generation import lifecycle
from generation.store import User
from jobs import limits
from jobs.limits import ConcurrencyLimiter
from jobs.runner import PromptWorker
from tests.conftest import AppFactory, wait_until
from tests.e2e.helpers import (
    Chat,
    album_images,
    all_settled,
    balance_and_ledger_sum,
    generation_ids_passed_to,
    generations_of,
    journal_of,
)
from tests.fakes.replicate import FakeReplicate, Outcome
from tests.fakes.telegram import FakeTelegram

FLUX = "black-forest-labs/flux-schnell"


async def test_room_at_once_is_recorded_claimed_and_a_full_limit_waits_queued(
    make_app: AppFactory, telegram: FakeTelegram, replicate: FakeReplicate
) -> None:
    app = await make_app(limit_per_user=1)  # no Redis: Plan B
    assert app.services is not None and app.inline is not None
    chat = Chat(telegram)
    chat.send("/start")
    await chat.reply("Hi,")
    # The writes the product made, and which of them had been made when the provider's create came.
    writes: list[str] = []
    before_create: list[list[str]] = []

    def on_execute(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        if statement.startswith(("INSERT", "UPDATE")):
            writes.append(" ".join(statement.split()[:3]))

    for engine in app.services.db.engines():
        event.listen(engine.sync_engine, "before_cursor_execute", on_execute)

    class CreatesSeen(list[object]):
        def append(self, item: object) -> None:
            before_create.append(list(writes))
            super().append(item)

    replicate.creates = CreatesSeen()  # type: ignore[assignment]
    hold = asyncio.Event()
    replicate.script(FLUX, Outcome(hold=hold), Outcome())

    chat.send("/image 1 a fox")
    await replicate.wait_for_create(1)
    # The record (generation, charge, ledger row) also claimed it: no UPDATE of the generation came
    # before the provider's call (the status message goes alongside the call).
    assert not any(write.startswith("UPDATE generations") for write in before_create[0])
    assert sum(write == "INSERT INTO generations" for write in before_create[0]) == 1
    [first] = await generations_of(app)
    assert (first.status, first.attempts, first.lease_owner) == ("running", 1, app.inline.owner)

    chat.send("/image 1 a cat")  # the user's one slot is held: this one waits its turn
    await chat.reply("Waiting")
    second = next(g for g in await generations_of(app) if g.id != first.id)
    assert (second.status, second.attempts, second.lease_owner) == ("queued", 0, None)
    assert replicate.create_count(FLUX) == 1

    hold.set()
    settled = await all_settled(app, 2)
    assert [(g.status, g.attempts) for g in settled] == [("done", 1), ("done", 1)]
    assert replicate.create_count(FLUX) == 2
    assert await balance_and_ledger_sum(app) == (8, 8)


async def answered_more_than(chat: Chat, count: int) -> bool:
    return len(chat.texts()) > count


async def test_an_update_reads_its_conversation_and_its_user_in_one_statement(
    make_app: AppFactory, telegram: FakeTelegram, database_url: str
) -> None:
    """aiogram reads the conversation's state for every update; that read also reads the user, whom
    the user middleware then does not read again. A first contact and a new username still go
    through the transaction that creates or changes the user."""
    app = await make_app(database_url=database_url)
    assert app.services is not None
    reads: list[str] = []

    def on_execute(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        if "conversation_states" in statement or "FROM users" in statement:
            reads.append(statement)

    for engine in app.services.db.engines():
        event.listen(engine.sync_engine, "before_cursor_execute", on_execute)
    chat = Chat(telegram)
    await chat.ask("/start", "Hi,")  # a first contact: created, with the bonus
    reads.clear()
    answered = len(chat.texts())
    chat.send("/balance")
    await wait_until(lambda: answered_more_than(chat, answered))
    # One statement of the update's own reads before the handler's (its ledger lines).
    [read] = [statement for statement in reads if "conversation_states" in statement]
    assert "users" in read
    assert not [statement for statement in reads if statement is not read and "telegram_id" in statement]

    reads.clear()
    renamed = Chat(telegram, user_id=chat.user_id + 1)
    renamed.send("/start", username="old_name")
    await renamed.reply("Hi,")
    answered = len(renamed.texts())
    renamed.send("/balance", username="new_name")
    await wait_until(lambda: answered_more_than(renamed, answered))
    async with app.services.db.sessions() as session:
        user = await session.scalar(select(User).where(User.telegram_id == renamed.user_id))
    assert user is not None and user.username == "new_name"


@pytest.mark.parametrize(("plan", "prefer"), [("B", "wait=10"), ("A", "wait=5")])
async def test_a_quick_prediction_comes_with_its_create_and_is_not_polled(
    make_app: AppFactory,
    telegram: FakeTelegram,
    replicate: FakeReplicate,
    redis_url: str,
    plan: str,
    prefer: str,
) -> None:
    """flux-schnell waits (catalog.toml): Replicate holds the create's answer until the prediction
    ends, for 10 s at most, and on Plan A no longer than a job's wait budget (JOB_WAIT_BUDGET, 5 s).
    A prediction that ends meanwhile is journaled with its id and never polled; one that outlasts
    the wait is polled as before."""
    app = await make_app(redis_url=redis_url) if plan == "A" else await make_app()
    chat = Chat(telegram)
    chat.send("/start")
    await chat.reply("Hi,")

    chat.send("/image 1 a fox")
    [quick] = await all_settled(app, 1)
    assert (quick.status, quick.plan) == ("done", plan)
    assert replicate.creates[0]["prefer"] == prefer
    assert replicate.polls == []
    journal = await journal_of(app, quick.id)
    assert journal["prediction:result"]["status"] == "succeeded"
    assert journal["prediction:result"]["id"] == journal["prediction:id"]
    assert len(chat.albums()) == 1

    replicate.script(FLUX, Outcome(polls=1))  # still running when the wait is over
    chat.send("/image 1 a cat")
    settled = await all_settled(app, 2)
    assert [g.status for g in settled] == ["done", "done"]
    [slow] = [g for g in settled if g.id != quick.id]
    slow_id = (await journal_of(app, slow.id))["prediction:id"]
    assert replicate.polls == [slow_id, slow_id]  # "processing", then "succeeded"
    assert await balance_and_ledger_sum(app) == (8, 8)


async def test_a_predictions_images_go_to_telegram_as_their_urls(
    make_app: AppFactory, telegram: FakeTelegram, replicate: FakeReplicate, database_url: str
) -> None:
    """Telegram fetches the images itself: the album carries the provider's URLs, no file, and the
    only downloads of them are the fake Telegram's."""
    app = await make_app(database_url=database_url)
    chat = Chat(telegram)
    chat.send("/image 2 a fox")
    [done] = await all_settled(app, 1)
    assert done.status == "done"
    [album] = chat.albums()
    urls = [item["media"] for item in album.params["media"]]
    assert all(url.startswith(f"{replicate.url}/delivery/") for url in urls)
    assert album.files == {}
    assert album_images(album) == [replicate.png_bytes(0), replicate.png_bytes(1)]
    assert len(replicate.downloads) == 2  # Telegram's, one per image


async def test_a_finished_predictions_id_is_journaled_with_the_delivery_mark_before_the_photo(
    make_app: AppFactory, telegram: FakeTelegram, database_url: str
) -> None:
    """A create that answered with the prediction finished: its id is owed to the journal and goes
    with the delivery's mark, in one write, which is on disk before the photo is sent."""
    app = await make_app(database_url=database_url)
    upload = telegram.hold("sendPhoto")
    chat = Chat(telegram)
    chat.send("/image a fox")
    await asyncio.wait_for(upload.arrived.wait(), 15)
    [running] = await generations_of(app)
    journal = await journal_of(app, running.id)
    assert {"prediction:id", "prediction:deadline", "prediction:result", "delivering"} <= set(journal)
    upload.release.set()
    [done] = await all_settled(app, 1)
    assert done.status == "done"


async def test_an_image_telegram_cannot_take_by_url_is_uploaded_and_so_is_that_hosts_next(
    make_app: AppFactory, telegram: FakeTelegram, replicate: FakeReplicate
) -> None:
    """A URL Telegram refuses (a host it cannot reach): the image is fetched and uploaded, the user
    gets it and pays once, and the bot's next images from that host go as uploads at once."""
    app = await make_app()
    telegram.fail_next("sendPhoto", error_code=400, description="Bad Request: failed to get HTTP URL content")
    chat = Chat(telegram)
    chat.send("/image a fox")
    [first] = await all_settled(app, 1)
    assert first.status == "done"
    refused, uploaded = telegram.sent(chat.token, methods=["sendPhoto"], include_failed=True)
    assert not refused.ok and str(refused.params["photo"]).startswith(f"{replicate.url}/delivery/")
    assert uploaded.ok and uploaded.upload("photo") == replicate.png_bytes(0) and uploaded.files

    chat.send("/image another fox")
    await all_settled(app, 2)
    *_, again = telegram.sent(chat.token, methods=["sendPhoto"], include_failed=True)
    assert again.ok and again.files  # uploaded straight away: no second try by URL
    assert len(telegram.sent(chat.token, methods=["sendPhoto"], include_failed=True)) == 3
    assert await balance_and_ledger_sum(app) == (8, 8)


@contextlib.asynccontextmanager
async def journal_locked(database_url: str) -> AsyncIterator[None]:
    """Writes to the journal's table wait meanwhile (reads go on): on SQLite every write waits."""
    if database_url.startswith("sqlite"):
        path = database_url.split("///", 1)[1]
        connection = sqlite3.connect(path, isolation_level=None, timeout=10, check_same_thread=False)
        # Off the event loop: the lock may have to wait for a write of the app's to end.
        await asyncio.to_thread(connection.execute, "BEGIN IMMEDIATE")
        try:
            yield
        finally:
            connection.execute("ROLLBACK")
            connection.close()
        return
    server = await asyncpg.connect(database_url.replace("+asyncpg", ""))
    try:
        async with server.transaction():
            await server.execute("LOCK TABLE steps IN SHARE MODE")  # INSERTs wait, reads do not
            yield
    finally:
        await server.close()


async def test_a_create_that_waited_counts_against_a_jobs_wait_budget(
    make_app: AppFactory, telegram: FakeTelegram, replicate: FakeReplicate, redis_url: str
) -> None:
    """A Plan A job waits on its provider for JOB_WAIT_BUDGET at most, then frees its worker's slot
    and comes back later: a create that Replicate held (`Prefer: wait`) spent that budget already,
    and the polls after it have only the rest."""
    app = await make_app(redis_url=redis_url, job_wait_budget=2.0, long_wait_poll=60.0)
    chat = Chat(telegram)
    chat.send("/start")
    await chat.reply("Hi,")
    replicate.script(FLUX, Outcome(polls=10_000))  # outlasts every wait
    create_answered = asyncio.Event()
    replicate.hold_create_answers = create_answered  # as Replicate holds a create that waits
    chat.send("/image 1 a fox")
    await replicate.wait_for_create(1)
    assert replicate.creates[0]["prefer"] == "wait=2"
    await asyncio.sleep(1.8)
    create_answered.set()

    async def released() -> bool:
        [generation] = await generations_of(app)
        return generation.attempts == 1 and generation.lease_owner is None

    await wait_until(released, timeout=10)
    # 0.2 s of the budget were left: about 10 polls 20 ms apart; the whole budget would be about 100.
    assert 1 <= len(replicate.polls) <= 40


async def test_a_plan_a_job_enqueued_here_takes_its_generation_as_recorded_not_read_again(
    make_app: AppFactory,
    telegram: FakeTelegram,
    replicate: FakeReplicate,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    reads = generation_ids_passed_to(monkeypatch, jobs.runner, "get_generation")
    app = await make_app(redis_url=redis_url)
    assert app.worker is not None
    chat = Chat(telegram)
    chat.send("/image 1 a fox")
    [done] = await all_settled(app, 1)
    assert (done.plan, done.status, done.attempts) == ("A", "done", 1)
    assert reads == []  # neither as its job started nor before its claim
    assert len(app.worker.enqueued_here) == 0  # taken, not kept
    assert len(chat.albums()) == 1
    assert await balance_and_ledger_sum(app) == (9, 9)


async def embedded_worker_running(app: App) -> PromptWorker:
    """The worker `aibot run` embeds, once its loop runs (and its enqueues can take jobs for it)."""
    embedded = app.worker
    assert embedded is not None

    async def running() -> bool:
        return embedded.worker is not None and embedded.worker._running

    await wait_until(running)
    assert embedded.worker is not None
    return embedded.worker


async def test_a_plan_a_generation_recorded_while_the_worker_here_has_room_runs_without_a_claim(
    make_app: AppFactory,
    telegram: FakeTelegram,
    replicate: FakeReplicate,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As a Plan B generation with room is recorded claimed by its runner, a Plan A one is recorded
    claimed by the worker this process embeds when it holds a place for its job: the enqueue takes
    the job for it, and the run goes straight to the provider, with no write of its own before."""
    claims = generation_ids_passed_to(monkeypatch, lifecycle, "claim")
    app = await make_app(redis_url=redis_url)
    worker = await embedded_worker_running(app)
    chat = Chat(telegram)
    chat.send("/image 1 a fox")
    [done] = await all_settled(app, 1)
    assert (done.plan, done.status, done.attempts) == ("A", "done", 1)
    assert claims == []  # recorded claimed: its run claimed nothing
    assert done.lease_owner is None
    assert len(chat.albums()) == 1
    assert await balance_and_ledger_sum(app) == (9, 9)
    await wait_until(holds(lambda: worker.job_counter == 0))  # its place given back


async def test_a_plan_a_generation_recorded_claimed_whose_enqueue_fails_runs_on_plan_b(
    make_app: AppFactory, telegram: FakeTelegram, replicate: FakeReplicate, redis_url: str
) -> None:
    """Its record said the worker here runs it, but the enqueue that was to take its job for it
    failed: the worker never ran it, so it goes back to queued on Plan B, and Plan B's runner claims
    and runs it; charged once, its place in the worker given back."""
    app = await make_app(redis_url=redis_url)
    worker = await embedded_worker_running(app)
    assert app.queue is not None

    async def no_answer(**call: Any) -> Any:
        raise ConnectionError("Redis went away")

    app.queue._enqueue_and_take_script = no_answer  # type: ignore[assignment]
    chat = Chat(telegram)
    chat.send("/image 1 a fox")
    [done] = await all_settled(app, 1)
    assert (done.plan, done.status, done.attempts, done.refunded) == ("B", "done", 1, 0)
    assert len(chat.albums()) == 1
    assert len(replicate.creates) == 1
    assert await balance_and_ledger_sum(app) == (9, 9)
    assert worker.job_counter == 0 and not worker.tasks


def holds(condition: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    """`condition` as `wait_until` asks for it."""

    async def check() -> bool:
        return condition()

    return check


async def test_a_plan_a_generation_cancelled_before_its_job_ran_is_not_run_from_its_record(
    make_app: AppFactory, telegram: FakeTelegram, replicate: FakeReplicate, redis_url: str
) -> None:
    """A cancellation made in this process drops the generation its worker would take as recorded.
    One made by another process cannot: the job then takes it as recorded (queued), and the claim
    finds it settled, so nothing reaches the provider, its slots are given back, and the refund made
    by the cancellation is the only one."""
    app = await make_app(redis_url=redis_url)
    embedded = app.worker
    assert embedded is not None and app.queue is not None

    await wait_until(holds(lambda: embedded.worker is not None and embedded.worker.main_task is not None))
    worker = embedded.worker
    assert worker is not None
    worker.allow_pick_jobs = False  # the job waits in the queue until the cancellation is made
    chat = Chat(telegram)
    chat.send("/image 2 a fox")
    await wait_until(holds(lambda: len(embedded.enqueued_here) == 1))
    [recorded] = await generations_of(app)
    assert recorded.status == "queued"
    chat.send("/cancel")
    await chat.reply("Canceled. 2 ⭐ returned. Balance: 10 ⭐")
    assert len(embedded.enqueued_here) == 0  # dropped by the cancellation
    embedded.enqueued_here.put(recorded)  # as if another process had cancelled it
    worker.allow_pick_jobs = True
    await wait_until(holds(lambda: len(embedded.enqueued_here) == 0))  # its job took it
    await wait_until(holds(lambda: worker.jobs_complete + worker.jobs_failed >= 1))
    [generation] = await all_settled(app, 1)
    assert (generation.plan, generation.status, generation.refunded) == ("A", "canceled", 2)
    assert replicate.creates == []
    pool = app.queue.pool
    # Its slots and its place in any line are given back. (The window of creates per minute keeps it
    # for that minute, counted as a create: the price of not reading before the slots are taken.)
    rate_windows = {f"{limits.PREFIX}rate:replicate"}
    for key in await pool.keys(f"{limits.PREFIX}*"):
        if key.decode() not in {limits.LINES, *rate_windows}:  # the others: sorted sets of ids
            assert await pool.zscore(key, generation.id) is None, key
    assert chat.albums() == []
    assert await balance_and_ledger_sum(app) == (10, 10)


async def slots_held_by(pool: Any, generation_id: str) -> list[str]:
    """The limiter's slot sets (not the lines, nor the window of creates per minute) that hold it."""
    held = []
    for key in await pool.keys(f"{limits.PREFIX}*"):
        name = key.decode()
        if name == limits.LINES or name.startswith((limits.LINE_PREFIX, f"{limits.PREFIX}rate:")):
            continue
        if await pool.zscore(key, generation_id) is not None:
            held.append(name)
    return sorted(held)


async def test_a_plan_a_job_taken_at_its_enqueue_takes_its_slots_in_the_same_trip(
    make_app: AppFactory,
    telegram: FakeTelegram,
    replicate: FakeReplicate,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The enqueue that takes a job for the worker here takes the job's concurrency slots in the same
    script: the run asks the limiter nothing, holds them while the provider works, and gives them
    back as it ends."""
    asked = generation_ids_passed_to(monkeypatch, ConcurrencyLimiter, "acquire")
    app = await make_app(redis_url=redis_url)
    await embedded_worker_running(app)
    assert app.queue is not None
    hold = asyncio.Event()
    replicate.script(FLUX, Outcome(hold=hold))
    chat = Chat(telegram)
    chat.send("/image 1 a fox")
    await replicate.wait_for_create(1, timeout=20)
    [running] = await generations_of(app)
    assert await slots_held_by(app.queue.pool, running.id) == [
        f"{limits.PREFIX}global",
        f"{limits.PREFIX}provider:replicate",
        f"{limits.PREFIX}user:{running.user_id}",
    ]
    hold.set()
    [done] = await all_settled(app, 1)
    assert (done.plan, done.status, done.attempts) == ("A", "done", 1)
    assert asked == []  # the run took no slot of its own: its enqueue had
    await wait_until(lambda: _no_slots(app, done.id))
    assert len(chat.albums()) == 1
    assert await balance_and_ledger_sum(app) == (9, 9)


async def _no_slots(app: App, generation_id: str) -> bool:
    assert app.queue is not None
    return await slots_held_by(app.queue.pool, generation_id) == []


async def test_a_job_whose_enqueue_took_its_slots_but_looked_failed_gives_them_back(
    make_app: AppFactory, telegram: FakeTelegram, replicate: FakeReplicate, redis_url: str
) -> None:
    """The enqueue's script ran (its job taken, its slots too) but its answer was lost: the generation
    runs on Plan B. When its job runs at last, it finds the generation on Plan B and gives back the
    slots its enqueue took, which would otherwise hold the user's and the provider's places until
    they expired."""
    app = await make_app(redis_url=redis_url)
    worker = await embedded_worker_running(app)
    assert app.queue is not None
    script = app.queue._enqueue_and_take_script

    async def answer_lost(**call: Any) -> Any:
        await script(**call)
        raise ConnectionError("Redis went away")

    app.queue._enqueue_and_take_script = answer_lost  # type: ignore[assignment]
    chat = Chat(telegram)
    chat.send("/image 1 a fox")
    [done] = await all_settled(app, 1)
    assert (done.plan, done.status, done.attempts, done.refunded) == ("B", "done", 1, 0)
    pool = app.queue.pool
    assert len(await slots_held_by(pool, done.id)) == 3  # taken by the enqueue, never run
    await pool.delete(in_progress_key_prefix + done.id)  # its mark runs out: a look takes the job
    await wait_until(lambda: _no_slots(app, done.id))
    await wait_until(holds(lambda: worker.job_counter == 0 and worker.jobs_complete >= 1))
    assert len(replicate.creates) == 1
    assert await balance_and_ledger_sum(app) == (9, 9)
