"""Several fronts and workers on one PostgreSQL and one Redis, as deployed: two `aibot run` in webhook
mode behind one address, two `aibot worker`, a load of generations, and one worker and one front killed
with SIGKILL while generations are in flight. Telegram (played by the test) sends every update again
until a front answers it 200, as the real one does. Afterwards: each update made one generation, each
generation ended once (delivered once, or refunded once), the provider saw at most one paid create per
generation, every ledger sums exactly, and a plan switched on one front held on the other."""

from __future__ import annotations

import asyncio
import signal
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
from sqlalchemy import func, select

from bot.http.secrets import telegram_webhook_secret
from generation.store import Database, Generation, GenerationStatus, LedgerEntry, Step, User
from tests.conftest import ADMIN_ID, BOT_TOKEN, closed_port, wait_until
from tests.e2e.helpers import Chat
from tests.fakes.balancer import Balancer
from tests.fakes.replicate import FakeReplicate, Outcome
from tests.fakes.telegram import FakeTelegram
from tests.processes import Spawn, environment, logs_of, wait_healthy

# Four processes start at once, each importing aiogram (seconds of CPU): on a busy machine that alone
# can take a minute or two, hence a larger bound for the test than the suite's.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(360)]

FLUX = "black-forest-labs/flux-schnell"
WEBHOOK_SECRET = "topology-secret-1"
BOT = "image_bot"
BONUS = 10  # NEW_USER_BONUS in tests/processes.py
USERS = 40
PLAN_A_PER_USER = 2  # then one more each on Plan B
FAILING = 5  # the first creates end "failed" at the provider: refunded
PINNED = 5  # Plan B generations sent straight to the front that dies
# How many updates Telegram has in flight to the bot at once (it allows up to max_connections).
TELEGRAM_CONNECTIONS = 20
TIMEOUT = 60.0
STARTUP = 150.0  # for the processes to come up (see pytestmark)

Update = dict[str, Any]


class Telegram:
    """Telegram's side of webhook mode: POST each update to the webhook address, again and again until
    it is answered 200 (a 503, a connection refused or cut by a dying front: all mean "send it again")."""

    def __init__(self, http: aiohttp.ClientSession) -> None:
        self.http = http
        self.gate = asyncio.Semaphore(TELEGRAM_CONNECTIONS)
        self.answered = 0
        self.refusals: Counter[str] = Counter()  # why a delivery had to be repeated

    async def deliver(self, base_url: str, update: Update) -> None:
        headers = {"X-Telegram-Bot-Api-Secret-Token": telegram_webhook_secret(WEBHOOK_SECRET, BOT)}
        deadline = asyncio.get_running_loop().time() + TIMEOUT
        async with self.gate:
            while True:
                assert asyncio.get_running_loop().time() < deadline, f"never answered 200: {update}"
                try:
                    async with self.http.post(
                        f"{base_url}/webhooks/telegram/{BOT}",
                        json=update,
                        headers=headers,
                        timeout=aiohttp.ClientTimeout(total=15),
                    ) as response:
                        await response.read()
                        if response.status == 200:
                            self.answered += 1
                            return
                        self.refusals[str(response.status)] += 1
                except (aiohttp.ClientError, TimeoutError) as error:
                    self.refusals[type(error).__name__] += 1
                await asyncio.sleep(0.1)  # Telegram waits a little before it delivers again

    async def deliver_all(self, base_url: str, updates: list[Update]) -> None:
        await asyncio.gather(*(self.deliver(base_url, update) for update in updates))


@asynccontextmanager
async def observer(database_url: str) -> AsyncIterator[Database]:
    """The test's own look at the shared database (the fronts created its schema)."""
    db = Database(database_url)
    try:
        yield db
    finally:
        await db.close()


async def all_generations(db: Database) -> list[Generation]:
    async with db.sessions() as session:
        return list(await session.scalars(select(Generation).order_by(Generation.created_at)))


def request_key(update: Update) -> str:
    message = update["message"]
    return f"tg:{BOT}:{message['chat']['id']}:{message['message_id']}"


async def test_two_fronts_two_workers_with_a_front_and_a_worker_killed_midway(
    spawn: Spawn,
    telegram: FakeTelegram,
    replicate: FakeReplicate,
    postgres_url: str,
    redis_url: str,
) -> None:
    ports = [closed_port(), closed_port()]
    tuning = {
        "DATABASE_URL": postgres_url,
        "REDIS_URL": redis_url,
        "BOT_MODE": "webhook",
        # Given to Telegram only (the fake never calls it); without REPLICATE_WEBHOOK_SECRET the
        # predictions are polled, so nothing is posted there.
        "WEBHOOK_BASE_URL": "https://bots.example.com",
        "WEBHOOK_SECRET": WEBHOOK_SECRET,
        "EMBEDDED_WORKER": "false",
        # Room for a delivery on a busy machine: a try cut by arq's timeout mid-send could send twice.
        # A killed worker's jobs do not wait for it: the reconciler hands them over once leases expire.
        "JOB_TIMEOUT": "10",
        "LONG_WAIT_POLL": "0.5",
        "RETRY_BACKOFF_BASE": "0.2",
        "RECONCILE_EVERY": "1",
        # A generation fresher than this may still be on its way into Redis (Plan A), or to its run in
        # the front that recorded it (Plan B): the reconcilers leave it alone until then.
        "RECONCILE_GRACE": "3",
        "LEASE_SECONDS": "2",  # a dead runner's generations are taken over 2 s after it died
        # Many predictions are waited on at once: polling each 20 times a second would eat the CPU
        # the runners need to renew their leases in time.
        "REPLICATE_POLL_INTERVAL": "0.25",
    }
    release = asyncio.Event()
    replicate.default_outcome = Outcome(hold=release)  # in flight until the kills are done
    replicate.script(FLUX, *(Outcome(status="failed", error="the GPU caught fire") for _ in range(FAILING)))

    # Everything started at once, as an orchestrator starts replicas: the fronts race to migrate the
    # empty database, and the workers find it empty until one of them has.
    processes = await asyncio.gather(
        *(spawn("run", environment(telegram, replicate, HTTP_PORT=str(port), **tuning)) for port in ports),
        *(spawn("worker", environment(telegram, replicate, **tuning)) for _ in range(2)),
    )
    fronts, workers = processes[:2], processes[2:]
    try:
        for port, front in zip(ports, fronts, strict=True):
            await wait_healthy(port, front, timeout=STARTUP)
        balancer = Balancer(ports)
        await balancer.start()
        try:
            async with (
                aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http,
                observer(postgres_url) as db,
            ):
                await _run_topology(http, db, balancer, ports, fronts, workers, telegram, replicate, release)
        finally:
            await balancer.stop()
    except BaseException:
        for process in processes:  # what each process said, for whoever reads the failure
            print(f"--- aibot pid {process.pid} (exit {process.returncode}) ---")
            print(logs_of(process)[-6000:])
        raise


async def _run_topology(
    http: aiohttp.ClientSession,
    db: Database,
    balancer: Balancer,
    ports: list[int],
    fronts: list[asyncio.subprocess.Process],
    workers: list[asyncio.subprocess.Process],
    telegram: FakeTelegram,
    replicate: FakeReplicate,
    release: asyncio.Event,
) -> None:
    sender = Telegram(http)
    users = [Chat(telegram, user_id=20_000 + index) for index in range(USERS)]
    admin = Chat(telegram, user_id=ADMIN_ID)
    front_urls = [f"http://127.0.0.1:{port}" for port in ports]

    # Everyone registers (through the balancer, as Telegram sees one address).
    await sender.deliver_all(balancer.url, [chat.send("/start") for chat in [*users, admin]])

    # Plan A load: each user asks for two images, each with its own prompt.
    plan_a = [
        chat.send(f"/image plan a {chat.user_id} {n}") for n in range(PLAN_A_PER_USER) for chat in users
    ]
    await sender.deliver_all(balancer.url, plan_a)
    # Answered 200 only once handled: every one is recorded by now.
    recorded = await all_generations(db)
    assert len(recorded) == len(plan_a) and {g.plan for g in recorded} == {"A"}
    assert min(balancer.connections[port] for port in ports) > 0, balancer.connections  # both served
    # All at the provider, held there (the workers may still be starting).
    await replicate.wait_for_create(len(plan_a), timeout=STARTUP)

    # A worker dies with generations in flight.
    workers[0].send_signal(signal.SIGKILL)
    await workers[0].wait()

    # The admin switches to Plan B on one front; the other front's next generation takes Plan B.
    await sender.deliver(front_urls[0], admin.send("/plan b"))
    await admin.reply("Plan mode switched to b")
    admin_image = admin.send("/image plan b through the other front")
    await sender.deliver(front_urls[1], admin_image)
    async with db.sessions() as session:
        switched = await session.scalar(
            select(Generation).where(Generation.request_key == request_key(admin_image))
        )
    assert switched is not None and switched.plan == "B"

    # Plan B load (run inline in the fronts); a front dies halfway through it, with generations of
    # its own at the provider (the first few users' are sent to it directly, to know some are).
    plan_b = [chat.send(f"/image plan b {chat.user_id}") for chat in users]
    pinned, balanced = plan_b[:PINNED], plan_b[PINNED:]
    await sender.deliver_all(front_urls[0], pinned)
    load = asyncio.gather(*(sender.deliver(balancer.url, update) for update in balanced))
    before = sender.answered
    await wait_until(_answered(sender, before + len(balanced) // 2), timeout=TIMEOUT)
    await wait_until(_at_the_provider(db, [request_key(update) for update in pinned]), timeout=TIMEOUT)
    fronts[0].send_signal(signal.SIGKILL)
    await fronts[0].wait()
    served_by_dead_front = balancer.connections[ports[0]]
    await asyncio.wait_for(load, TIMEOUT)
    assert balancer.connections[ports[0]] == served_by_dead_front  # nothing sent to the dead one

    images = [*plan_a, admin_image, *plan_b]
    # Every generation reaches the provider (the dead front's by the live one, which resumes them
    # once their leases expire) while the predictions are still held; then they all finish.
    await replicate.wait_for_create(len(images), timeout=TIMEOUT)
    release.set()

    async def all_final() -> bool:
        found = await all_generations(db)
        return len(found) == len(images) and all(GenerationStatus(g.status).is_final for g in found)

    await wait_until(all_final, timeout=TIMEOUT)
    generations = await all_generations(db)
    await _check_outcomes(db, generations, images, telegram, replicate)
    # The dead front's generations were taken over by the live one: a second claim, on the same
    # prediction (one create each, checked above).
    taken_over = {request_key(update) for update in pinned}
    assert all(g.attempts >= 2 for g in generations if g.request_key in taken_over)
    assert workers[1].returncode is None and fronts[1].returncode is None


def _at_the_provider(db: Database, keys: list[str]) -> Callable[[], Awaitable[bool]]:
    """Whether each of these generations is running with its prediction created (journaled)."""

    async def created() -> bool:
        async with db.sessions() as session:
            count = await session.scalar(
                select(func.count())
                .select_from(Step)
                .join(Generation, Generation.id == Step.generation_id)
                .where(Generation.request_key.in_(keys), Step.name == "prediction:id")
            )
        return count == len(keys)

    return created


def _answered(sender: Telegram, count: int) -> Callable[[], Awaitable[bool]]:
    async def reached() -> bool:
        return sender.answered >= count

    return reached


async def _check_outcomes(
    db: Database,
    generations: list[Generation],
    images: list[Update],
    telegram: FakeTelegram,
    replicate: FakeReplicate,
) -> None:
    # Each update handled once: one generation per /image update, none else.
    assert sorted(g.request_key for g in generations) == sorted(request_key(update) for update in images)
    assert Counter(g.plan for g in generations) == {"A": USERS * PLAN_A_PER_USER, "B": USERS + 1}

    creates = Counter(
        create["input"]["prompt"] for create in replicate.creates if 200 <= create["status_answered"] < 300
    )
    async with db.sessions() as session:
        deliveries = {
            generation_id: result
            for generation_id, result in await session.execute(
                select(Step.generation_id, Step.result).where(Step.name == "deliver")
            )
        }
        ledger = list(await session.scalars(select(LedgerEntry)))
        users = {user.id: user for user in await session.scalars(select(User))}

    statuses = Counter(g.status for g in generations)
    assert statuses["failed"] >= FAILING and statuses["done"] > 0, statuses
    assert set(statuses) <= {"done", "failed", "canceled"}, statuses
    for generation in generations:
        prompt = generation.request["prompt"]
        assert creates[prompt] <= 1, f"{prompt!r} was paid for {creates[prompt]} times"
        if generation.status == "done":
            assert creates[prompt] == 1 and generation.refunded == 0, generation.id
            assert deliveries[generation.id] == generation.result["message_ids"]  # type: ignore[index]
        else:
            assert generation.refunded == generation.price and generation.id not in deliveries

    # Every photo sent is one done generation's delivery, and each of those was sent once.
    photos: list[tuple[int, int]] = []
    for call in telegram.sent(BOT_TOKEN, methods=["sendPhoto", "sendMediaGroup"]):
        messages = call.result if isinstance(call.result, list) else [call.result]
        photos += [(int(call.chat_id), int(message["message_id"])) for message in messages]
    delivered = [
        (int(generation.chat_id or 0), int(message_id))
        for generation in generations
        if generation.status == "done"
        for message_id in deliveries[generation.id]
    ]
    assert sorted(photos) == sorted(delivered)

    # The ledger: one bonus, one charge per generation, one refund per failed one; balances agree.
    keys = Counter(entry.operation_key for entry in ledger)
    assert max(keys.values()) == 1
    for generation in generations:
        assert f"charge:{generation.id}" in keys
        assert (f"refund:{generation.id}" in keys) == (generation.refunded > 0)
    for user_id, user in users.items():
        mine = [g for g in generations if g.user_id == user_id]
        entries = [entry.amount for entry in ledger if entry.user_id == user_id]
        expected = BONUS - sum(g.price for g in mine) + sum(g.refunded for g in mine)
        assert user.balance == sum(entries) == expected, (user.telegram_id, user.balance, entries)
    assert len(users) == USERS + 1
