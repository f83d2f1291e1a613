"""Calls of a Lua script that arrive together go to Redis together, in one round trip.

Plan A's hot path calls a few scripts once per generation each: the enqueue (jobs/queue.py), a worker's
look (which takes the jobs it finds) and a job's end (jobs/runner.py), and the limiter's acquire and
release (jobs/limits.py, which calls its own on their own: batched, they started jobs in waves and
slowed a newcomer's 202). In a burst hundreds of each are under way at once, and every call paid a round
trip of its own: a connection taken from the pool, a send, the answer read and handed back, each its own
turn of the event loop. Those trips, not Redis, were most of what a Plan A generation costs more than a
Plan B one.

`BatchedScript` sends a call at once when none of its calls is on its way, exactly as the script would
be called alone: alone, a call waits for nothing. While one is on its way, the calls that arrive wait
for it to come back, then all go in one pipeline (not a transaction: each call is atomic by itself,
as a script is, and none depends on another's answer). The batch grows with the load and the round
trip's length; under none it is one call, at no cost.

Calls that come one by one, each after the last came back, would still go one per trip: on SQLite a
burst's records are written one after the other (the process has one writer), and each enqueue went
alone, a round trip for every generation. So a call that comes within `linger` of the call before it
(calls arriving as a stream) waits up to `linger` for the next ones, and they go together, as
Nagle's algorithm holds a small write for the next. A call after a quiet moment goes at once. In a
burst of 400 on SQLite (bench/hot_path.py) that took Plan A from 1.7 round trips per generation to
1.0; a generation's answer waits at most `linger` more.

Each call still gets its own answer or its own error. A script Redis no longer knows (flushed by a
restart) is loaded by calling it alone, as redis-py's script object does. A call cancelled while it
waits for the batch is not sent. A batch that gets no answer within `within` seconds fails with
redis-py's TimeoutError, a `RedisError` as a lost connection's error is, for every call in it: a hung
connection holds the calls that wait behind it no longer than that.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import NoScriptError
from redis.exceptions import TimeoutError as RedisTimeoutError

# Long past any answer of a healthy Redis to these scripts (well under a millisecond each, tens of
# milliseconds under load), short enough that a connection that hangs does not stall a worker.
ANSWER_WITHIN = 10.0
# How long a call that comes in a stream of calls waits for the next (see the module's doc): a few
# of a burst's records on SQLite, a moment beside a generation's own steps.
LINGER = 0.003

_Call = tuple[Sequence[Any], Sequence[Any], "asyncio.Future[Any]"]


class BatchedScript:
    """`redis.register_script(text)`, called the same way (`await script(keys=..., args=...)`), whose
    calls made while another is on its way go together in one round trip (see the module's doc)."""

    def __init__(
        self, redis: Redis, text: str, *, within: float = ANSWER_WITHIN, linger: float = LINGER
    ) -> None:
        self._redis = redis
        self._script = redis.register_script(text)
        self._within = within
        self._linger = linger
        self._last_call = float("-inf")  # when the last call came (the loop's clock)
        self._on_its_way = False
        self._waiting: list[_Call] = []
        self._sending: asyncio.Task[None] | None = None
        self.batches = 0  # round trips that carried more than one call (for tests and benches)

    async def __call__(self, keys: Sequence[Any] = (), args: Sequence[Any] = ()) -> Any:
        loop = asyncio.get_running_loop()
        now = loop.time()
        in_a_stream, self._last_call = now - self._last_call < self._linger, now
        if in_a_stream and not self._on_its_way:
            # Held for the calls that follow; they all leave together when the moment is over.
            self._on_its_way = True
            loop.call_later(self._linger, self._send_waiting)
        if self._on_its_way:
            future: asyncio.Future[Any] = loop.create_future()
            self._waiting.append((keys, args, future))
            return await future  # cancelled here before its batch left: it is not sent
        self._on_its_way = True
        try:
            return await self._answered(self._script(keys=keys, args=args))
        finally:
            self._send_waiting()

    async def many(self, calls: Sequence[tuple[Sequence[Any], Sequence[Any]]]) -> list[Any]:
        """Several calls at once, as (keys, args): in one round trip unless a call is on its way (then
        with the calls that wait for it). Each call's answer, or its error, in their order."""
        if self._on_its_way or len(calls) < 2:
            return await asyncio.gather(*(self(keys, args) for keys, args in calls), return_exceptions=True)
        self._on_its_way = True
        try:
            return await self._answers([(keys, args) for keys, args in calls])
        finally:
            self._send_waiting()

    def _send_waiting(self) -> None:
        """Once a call or a batch came back, or a stream's moment is over: the calls that waited
        leave now, together."""
        batch = [call for call in self._waiting if not call[2].done()]
        self._waiting = []
        if not batch:
            self._on_its_way = False
            return
        self._sending = asyncio.get_running_loop().create_task(self._send(batch))

    async def _send(self, batch: list[_Call]) -> None:
        try:
            answers = await self._answers([(keys, args) for keys, args, _ in batch])
        except asyncio.CancelledError:  # the loop is closing: so are the calls that waited
            for _, _, future in [*batch, *self._waiting]:
                future.cancel()
            self._waiting = []
            self._on_its_way = False
            raise
        for (_, _, future), answer in zip(batch, answers, strict=True):
            if future.done():  # its caller was cancelled meanwhile
                continue
            if isinstance(answer, BaseException):
                future.set_exception(answer)
            else:
                future.set_result(answer)
        self._send_waiting()

    async def _answers(self, calls: list[tuple[Sequence[Any], Sequence[Any]]]) -> list[Any]:
        """Each call's answer or error; one call alone, several in one pipeline."""
        if len(calls) == 1:
            return [await self._one(*calls[0])]
        self.batches += 1
        pipe = self._redis.pipeline(transaction=False)
        for keys, args in calls:
            pipe.evalsha(self._script.sha, len(keys), *keys, *args)
        try:
            async with pipe:
                answers: list[Any] = await self._answered(pipe.execute(raise_on_error=False))
        except Exception as error:  # the connection's error is every call's
            return [error] * len(calls)
        for index, answer in enumerate(answers):
            if isinstance(answer, NoScriptError):  # Redis restarted: loaded by a call alone
                answers[index] = await self._one(*calls[index])
        return answers

    async def _one(self, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        """One call alone (loading the script if Redis does not know it); its error as its answer."""
        try:
            return await self._answered(self._script(keys=keys, args=args))
        except Exception as error:  # handed to the caller, who raises it
            return error

    async def _answered(self, awaitable: Any) -> Any:
        try:
            async with asyncio.timeout(self._within):
                return await awaitable
        except TimeoutError as error:
            raise RedisTimeoutError(f"no answer from Redis within {self._within:g} s") from error
