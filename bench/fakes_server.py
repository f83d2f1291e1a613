"""The fake Telegram and Replicate servers in a process of their own, timed, for the benchmarks.

    python -m bench.fakes_server --ready-file /tmp/fakes.json [--polls 0]

Starts tests/fakes' FakeTelegram (one bot, see BOT_TOKEN) and FakeReplicate on free loopback ports,
plus a small control API, then writes ``{"telegram", "replicate", "control", "pid"}`` (base URLs) to
the ready file and serves until SIGTERM/SIGINT.

Every request either fake serves is timed by an aiohttp middleware: its start and end on the
system-wide monotonic clock (``time.monotonic()``, the same clock in every process of the machine),
what it was and its HTTP status. The benchmark subtracts that time from end-to-end figures: time spent
inside the fakes' handlers is the provider's and Telegram's own time, everything else is the product's.

Control API (JSON, loopback only):

* ``POST /updates`` ``[{"user_id", "text"}, ...]``: messages from users to the bot, made and stored by
  the fake Telegram exactly as it makes its own (so replies to them work); answers the updates, for the
  benchmark to POST to the bot's webhook.
* ``GET /state``: counters (events, photos sent, requests in flight, last activity).
* ``GET /events?since=i``: the timed requests from index i on, ``[start, end, name, status]`` each.
* ``GET /wait-photos?count=n&timeout=s``: answers once n photos (sendPhoto / sendMediaGroup) were
  sent successfully, with the end time of the n-th.
* ``GET /wait-quiet?ms=q&timeout=s``: answers once no request is in flight and none started for q ms.
* ``GET /chats?count=n&timeout=s``: answers once the bot sent a message to n distinct chats (or at the
  timeout), with how many it sent to.
* ``POST /hold``: every prediction created from now on stays "processing" at the provider until
  ``POST /release``, which lets every held one finish at its next poll (and new ones as ``--polls``
  says again); both answer how many predictions were held so far.
* ``GET /creates?since=i``: the prompts of the accepted (2xx) prediction creates from index i on, in
  the order the fake accepted them (null for an input without one); their times are in ``/events``.
* ``GET /wait-creates?count=n&timeout=s``: answers once n prediction creates were accepted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.fakes.replicate import FakeReplicate, Outcome
from tests.fakes.telegram import FakeTelegram

BOT_NAME = "bench_bot"
BOT_TOKEN = "424242:BenchBenchBenchBenchBenchBenchBench42"
REPLICATE_TOKEN = "r8_bench_token"

PHOTO_METHODS = frozenset({"sendphoto", "sendmediagroup"})
# Requests to these names are provider creates (what "update in -> provider create" ends at).
CREATE_NAMES = frozenset(
    {"replicate POST /v1/models/{owner}/{name}/predictions", "replicate POST /v1/predictions"}
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Recorder:
    """Times every request of the fakes; wakes waiters when something changes."""

    def __init__(self) -> None:
        self.events: list[tuple[float, float, str, int]] = []
        self.photos = 0
        self.photo_ends: list[float] = []
        self.in_flight = 0
        self.last_activity = time.monotonic()
        self._changed = asyncio.Event()

    def middleware(self, service: str) -> Any:
        @web.middleware
        async def timed(request: web.Request, handler: Handler) -> web.StreamResponse:
            start = time.monotonic()
            self.in_flight += 1
            self.last_activity = start
            status = 500
            try:
                response = await handler(request)
                status = response.status
                return response
            except web.HTTPException as error:
                status = error.status
                raise
            finally:
                end = time.monotonic()
                self.in_flight -= 1
                self.last_activity = end
                self._record(start, end, _name(service, request), status)

        return timed

    def _record(self, start: float, end: float, name: str, status: int) -> None:
        self.events.append((start, end, name, status))
        method = name.rsplit(" ", 1)[-1].lower()
        if name.startswith("telegram") and method in PHOTO_METHODS and status == 200:
            self.photos += 1
            self.photo_ends.append(end)
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def wait(self, predicate: Callable[[], bool], timeout: float, poll: float | None = None) -> bool:
        """Wait until `predicate` holds (checked on every change, and every `poll` seconds if given)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate():
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            changed = self._changed
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), min(remaining, poll) if poll else remaining)
        return True


def _name(service: str, request: web.Request) -> str:
    if service == "telegram":
        return f"telegram {request.match_info.get('method', request.path)}"
    resource = request.match_info.route.resource
    path = resource.canonical if resource is not None else request.path
    return f"{service} {request.method} {path}"


@contextlib.contextmanager
def timed_applications(recorder: Recorder, service: str) -> Iterator[None]:
    """Every aiohttp Application made inside gets the recorder's middleware (the fakes build theirs in
    start(), with no hook to add one)."""
    original = web.Application.__init__

    def init(app: web.Application, *args: Any, middlewares: Any = (), **kwargs: Any) -> None:
        original(app, *args, middlewares=(*middlewares, recorder.middleware(service)), **kwargs)

    web.Application.__init__ = init  # type: ignore[method-assign, assignment]
    try:
        yield
    finally:
        web.Application.__init__ = original  # type: ignore[method-assign]


class Holds:
    """Holding every new prediction at the fake provider ("processing") until released, and the
    prompts of the accepted creates in the order the fake accepted them."""

    def __init__(self, replicate: FakeReplicate, polls: int) -> None:
        self.replicate = replicate
        self.polls = polls
        self.event: asyncio.Event | None = None
        self.held = 0
        self.prompts: list[str | None] = []
        self._seen = 0  # how many of replicate.creates were looked at

    def hold(self) -> None:
        self.accepted()
        if self.event is None or self.event.is_set():
            self.event = asyncio.Event()
        self.replicate.default_outcome = Outcome(hold=self.event)

    def release(self) -> None:
        self.accepted()
        self.replicate.default_outcome = Outcome(polls=self.polls)
        if self.event is not None:
            self.event.set()

    def accepted(self) -> list[str | None]:
        """The prompts of the accepted (2xx) creates so far, in order (the outcome of a prediction is
        fixed at its create, so counting the held ones at every hold and release is exact)."""
        creates = self.replicate.creates
        holding = self.event is not None and not self.event.is_set()
        for create in creates[self._seen :]:
            if 200 <= int(create.get("status_answered", 0)) < 300:
                self.prompts.append(_prompt(create))
                self.held += 1 if holding else 0
        self._seen = len(creates)
        return self.prompts


def _prompt(create: dict[str, Any]) -> str | None:
    given = create.get("input")
    prompt = given.get("prompt") if isinstance(given, dict) else None
    return prompt if isinstance(prompt, str) else None


def control_app(recorder: Recorder, telegram: FakeTelegram, holds: Holds) -> web.Application:
    async def updates(request: web.Request) -> web.Response:
        made = [
            telegram.user_message(
                BOT_TOKEN,
                user_id=int(item["user_id"]),
                text=str(item["text"]),
                language_code="en",
                first_name="Bench",
            )
            for item in await request.json()
        ]
        return web.json_response(made)

    async def state(request: web.Request) -> web.Response:
        return web.json_response(
            {
                "events": len(recorder.events),
                "photos": recorder.photos,
                "in_flight": recorder.in_flight,
                "last_activity": recorder.last_activity,
                "now": time.monotonic(),
            }
        )

    async def events(request: web.Request) -> web.Response:
        since = int(request.query.get("since", "0"))
        return web.json_response({"events": recorder.events[since:], "next": len(recorder.events)})

    async def wait_photos(request: web.Request) -> web.Response:
        count = int(request.query["count"])
        reached = await recorder.wait(lambda: recorder.photos >= count, float(request.query["timeout"]))
        body: dict[str, Any] = {"reached": reached, "photos": recorder.photos}
        if reached:
            body["end"] = recorder.photo_ends[count - 1]
        return web.json_response(body)

    async def wait_quiet(request: web.Request) -> web.Response:
        quiet = float(request.query["ms"]) / 1000

        def calm() -> bool:
            return recorder.in_flight == 0 and time.monotonic() - recorder.last_activity >= quiet

        reached = await recorder.wait(calm, float(request.query["timeout"]), poll=quiet / 4)
        return web.json_response({"reached": reached})

    greeted: set[Any] = set()
    seen = [0]  # how many of telegram.calls were looked at

    def count_chats() -> int:
        calls = telegram.calls
        for call in calls[seen[0] :]:
            if call.method == "sendMessage" and call.ok:
                greeted.add(call.chat_id)
        seen[0] = len(calls)
        return len(greeted)

    async def chats(request: web.Request) -> web.Response:
        count = int(request.query.get("count", "0"))
        reached = await recorder.wait(
            lambda: count_chats() >= count, float(request.query.get("timeout", "0"))
        )
        return web.json_response({"reached": reached, "chats": count_chats()})

    async def hold(request: web.Request) -> web.Response:
        holds.hold()
        return web.json_response({"held": holds.held})

    async def release(request: web.Request) -> web.Response:
        holds.release()
        return web.json_response({"held": holds.held})

    async def creates(request: web.Request) -> web.Response:
        since = int(request.query.get("since", "0"))
        accepted = holds.accepted()
        return web.json_response({"prompts": accepted[since:], "next": len(accepted)})

    async def wait_creates(request: web.Request) -> web.Response:
        count = int(request.query["count"])
        reached = await recorder.wait(lambda: len(holds.accepted()) >= count, float(request.query["timeout"]))
        return web.json_response({"reached": reached, "creates": len(holds.accepted())})

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/updates", updates)
    app.router.add_get("/state", state)
    app.router.add_get("/events", events)
    app.router.add_get("/wait-photos", wait_photos)
    app.router.add_get("/wait-quiet", wait_quiet)
    app.router.add_get("/chats", chats)
    app.router.add_post("/hold", hold)
    app.router.add_post("/release", release)
    app.router.add_get("/creates", creates)
    app.router.add_get("/wait-creates", wait_creates)
    return app


async def serve(ready_file: Path, polls: int) -> None:
    recorder = Recorder()
    telegram = FakeTelegram()
    replicate = FakeReplicate(token=REPLICATE_TOKEN)
    with timed_applications(recorder, "telegram"):
        await telegram.start()
    with timed_applications(recorder, "replicate"):
        await replicate.start()
    telegram.add_bot(BOT_TOKEN, BOT_NAME)
    replicate.default_outcome = Outcome(polls=polls)

    holds = Holds(replicate, polls)
    runner = web.AppRunner(control_app(recorder, telegram, holds), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    control_port = runner.addresses[0][1]

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for received in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(received, stop.set)
    ready = {
        "telegram": telegram.url,
        "replicate": replicate.url,
        "control": f"http://127.0.0.1:{control_port}",
        "pid": os.getpid(),
    }
    partial = ready_file.with_suffix(".partial")
    partial.write_text(json.dumps(ready))
    partial.replace(ready_file)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
        await replicate.stop()
        await telegram.stop()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ready-file", type=Path, required=True)
    parser.add_argument("--polls", type=int, default=0, help="GETs answering 'processing' before success")
    arguments = parser.parse_args()
    asyncio.run(serve(arguments.ready_file, arguments.polls))


if __name__ == "__main__":
    main()
