"""Concurrency limits for Plan A, shared by every worker through Redis: generations in flight per user,
per provider and overall, and provider creates per minute.

A generation holds its slots from its first run until it settles, waits included (it is running at
the provider even while no worker holds it). Each slot is a sorted-set member scored by when it
expires, refreshed on every run: a worker that dies frees its slots when they expire. One Lua script
checks and takes all slots at once, so two workers never both take the last one.

A generation refused a slot waits in that limit's line (a sorted set scored by when the generation
was recorded), and its job is deferred for long: nothing polls. Whoever frees a slot (a generation
settling) wakes the first in line, whose job then runs at once; a newcomer does not take a slot that
someone recorded before it waits for, so the line is served in order. A waiter refused by another
limit moves to that limit's line and passes on the wake it got. A periodic sweep (`waking_heads`)
wakes the heads of lines whose limit has room: slots that expired with a dead worker, or a wake that
reached a job just as it was being deferred.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from arq.connections import ArqRedis

from generation.limits import Limits

PREFIX = "aibot:limits:"
LINE_PREFIX = PREFIX + "line:"
# The names of the lines that may have waiters, for the sweep (no SCAN over the keyspace).
LINES = PREFIX + "lines"

# A waiting job is deferred this long (with a spread): a wake brings it back sooner, so this only
# bounds how long a waiter whose every wake was lost could sleep. Thousands waiting cost nothing.
WAIT_RECHECK = 300.0

_COMMON = """
local function free(slot, limit, now)
  redis.call('ZREMRANGEBYSCORE', slot, '-inf', now)
  return limit - redis.call('ZCARD', slot)
end
-- the first `count` of a line, as id, arrival, id, arrival...
local function heads(line, count, skip, wake)
  if count <= 0 then return end
  local found = redis.call('ZRANGE', line, 0, count - 1, 'WITHSCORES')
  for k = 1, #found, 2 do
    if found[k] ~= skip then
      table.insert(wake, found[k])
      table.insert(wake, found[k + 1])
    end
  end
end
"""

# `acquire(keys, argv)`. keys: n slot sets, their n lines, the set of line names, then the per-minute
# window when argv[4] is 1. argv: member, now (ms), expiry (ms), has window (0/1), the window's limit,
# arrival score, n, limits. Answers {0} when every slot is taken, {i, wait ms, place in line, ids to
# wake...} when slot set i (or the window, i = #keys) is full. A function, so that an enqueue that
# takes its job for the worker here (jobs/queue.py) takes the job's slots in the same script.
ACQUIRE_FUNCTION = (
    _COMMON
    + """
local function acquire(keys, argv)
  local member, now, expires = argv[1], tonumber(argv[2]), tonumber(argv[3])
  local has_window, arrival, n = argv[4] == '1', tonumber(argv[6]), tonumber(argv[7])
  for i = 1, n do
    if not redis.call('ZSCORE', keys[i], member) then
      local room = free(keys[i], tonumber(argv[7 + i]), now)
      -- those recorded earlier who wait for this slot go first
      local ahead = redis.call('ZCOUNT', keys[n + i], '-inf', '(' .. arrival)
      if room <= ahead then
        redis.call('ZADD', keys[n + i], 'NX', arrival, member)
        redis.call('SADD', keys[2 * n + 1], keys[n + i])
        local wake = {}
        for j = 1, n do
          if j ~= i then
            redis.call('ZREM', keys[n + j], member)
            -- it may have been woken for line j, which has room its next waiters must hear of
            heads(keys[n + j], free(keys[j], tonumber(argv[7 + j]), now), member, wake)
          end
        end
        local place = redis.call('ZRANK', keys[n + i], member) + 1
        return {i, 0, place, unpack(wake)}
      end
    end
  end
  if has_window then
    local window = keys[#keys]
    redis.call('ZREMRANGEBYSCORE', window, '-inf', now - 60000)
    if not redis.call('ZSCORE', window, member) then
      if redis.call('ZCARD', window) >= tonumber(argv[5]) then
        local oldest = redis.call('ZRANGE', window, 0, 0, 'WITHSCORES')
        return {#keys, tonumber(oldest[2]) + 60000 - now, 0}
      end
      redis.call('ZADD', window, now, member)
      redis.call('PEXPIRE', window, 61000)
    end
  end
  for i = 1, n do
    redis.call('ZADD', keys[i], expires, member)
    redis.call('PEXPIRE', keys[i], expires - now + 1000)
    redis.call('ZREM', keys[n + i], member)
  end
  return {0}
end
"""
)
_ACQUIRE = ACQUIRE_FUNCTION + "return acquire(KEYS, ARGV)\n"

# `release(keys, argv)`. keys: n slot sets, their n lines, the set of line names. argv: member, now
# (ms), n, limits. Frees the member's slots and its place in any line; answers the waiters to wake.
# A function, so that a job's end (jobs/runner.py) can free its slots in the same script.
RELEASE_FUNCTION = (
    _COMMON
    + """
local function release(keys, argv)
  local member, now, n = argv[1], tonumber(argv[2]), tonumber(argv[3])
  local wake = {}
  for i = 1, n do
    redis.call('ZREM', keys[i], member)
    redis.call('ZREM', keys[n + i], member)
    if redis.call('ZCARD', keys[n + i]) == 0 then
      redis.call('SREM', keys[2 * n + 1], keys[n + i])
    else
      heads(keys[n + i], free(keys[i], tonumber(argv[3 + i]), now), member, wake)
    end
  end
  return wake
end
"""
)
_RELEASE = RELEASE_FUNCTION + "return release(KEYS, ARGV)\n"

# KEYS: a slot set, its line, the set of line names. ARGV: now (ms), the limit. The waiters to wake.
_SWEEP = (
    _COMMON
    + """
if redis.call('ZCARD', KEYS[2]) == 0 then
  redis.call('SREM', KEYS[3], KEYS[2])
  return {}
end
local wake = {}
heads(KEYS[2], free(KEYS[1], tonumber(ARGV[2]), tonumber(ARGV[1])), '', wake)
return wake
"""
)


@dataclass(frozen=True)
class Refusal:
    """Which limit is full, when to look again (seconds), the place in its line (None for the
    per-minute window, which has no line), and the waiters this look found room for (to wake)."""

    limit: str
    retry_in: float
    place: int | None = None
    wake: dict[str, float] = field(default_factory=dict)


class ConcurrencyLimiter:
    def __init__(self, redis: ArqRedis, limits: Limits, slot_ttl: float) -> None:
        self.redis = redis
        self.limits = limits
        self.slot_ttl = slot_ttl
        # When a generation last had to wait here (time.monotonic()): while lines form, the worker
        # records no claims for its jobs (jobs/runner.py `PromptWorker.hold_place`).
        self.last_refusal = float("-inf")
        # Every running job calls these two, each call on its own: batched (jobs/batched_scripts.py),
        # jobs started in waves as each batch came back, and a newcomer's 202 during a Plan A burst
        # took twice as long at p99 (three sittings, PostgreSQL), for no burst run faster.
        self._acquire = redis.register_script(_ACQUIRE)
        self._release = redis.register_script(_RELEASE)
        self._sweep = redis.register_script(_SWEEP)

    def _slots(self, user_id: int, provider: str) -> list[tuple[str, int]]:
        return self.limits.slots(user_id, provider)

    async def acquire(
        self, generation_id: str, user_id: int, provider: str, *, arrival: float = 0.0
    ) -> Refusal | None:
        """Take (or refresh) every slot of this generation; None when taken, else which one is full
        (the generation then waits in its line; `arrival`, when it was recorded, orders the line)."""
        keys, arguments = self.acquire_call(generation_id, user_id, provider, arrival=arrival)
        return self.refusal(await self._acquire(keys=keys, args=arguments), user_id, provider)

    def acquire_call(
        self, generation_id: str, user_id: int, provider: str, *, arrival: float = 0.0
    ) -> tuple[list[str], list[str | int]]:
        """The keys and arguments of `ACQUIRE_FUNCTION` that take the generation's slots; its answer
        read by `refusal` is what `acquire` answers."""
        slots = self._slots(user_id, provider)
        keys = [PREFIX + name for name, _ in slots]
        keys += [LINE_PREFIX + name for name, _ in slots]
        keys.append(LINES)
        rate = self.limits.creates_per_minute.get(provider)
        if rate is not None:
            keys.append(f"{PREFIX}rate:{provider}")
        now = int(time.time() * 1000)
        arguments: list[str | int] = [generation_id, now, now + int(self.slot_ttl * 1000)]
        arguments += [1 if rate is not None else 0, rate or 0, int(arrival * 1000), len(slots)]
        arguments += [size for _, size in slots]
        return keys, arguments

    def refusal(self, answer: Sequence[Any], user_id: int, provider: str) -> Refusal | None:
        """`ACQUIRE_FUNCTION`'s answer for this user's generation with this provider: None when every
        slot was taken, else which limit is full."""
        full = int(answer[0])
        if full == 0:
            return None
        self.last_refusal = time.monotonic()
        slots = self._slots(user_id, provider)
        if full > len(slots):  # the per-minute window: the time it frees is known
            retry_in = max(float(answer[1]) / 1000, 0.5) + random.uniform(0, 0.5)
            return Refusal(limit=f"rate:{provider}", retry_in=retry_in)
        wake = arrivals(answer[3:])
        return Refusal(
            limit=slots[full - 1][0],
            retry_in=WAIT_RECHECK * random.uniform(0.9, 1.1),
            place=int(answer[2]),
            wake=wake,
        )

    async def release(self, generation_id: str, user_id: int, provider: str) -> dict[str, float]:
        """Free the generation's slots (it settled); answers the waiters now first in line for them,
        with when each was recorded (ms): woken in that order, the line keeps its order in arq's queue."""
        keys, arguments = self.release_call(generation_id, user_id, provider)
        return arrivals(await self._release(keys=keys, args=arguments))

    def release_call(
        self, generation_id: str, user_id: int, provider: str
    ) -> tuple[list[str], list[str | int]]:
        """The keys and arguments of `RELEASE_FUNCTION` that free the generation's slots; its answer
        read by `arrivals` is what `release` answers."""
        slots = self._slots(user_id, provider)
        keys = [PREFIX + name for name, _ in slots] + [LINE_PREFIX + name for name, _ in slots] + [LINES]
        arguments: list[str | int] = [generation_id, int(time.time() * 1000), len(slots)]
        arguments += [size for _, size in slots]
        return keys, arguments

    async def waking_heads(self) -> dict[str, float]:
        """The waiters first in the lines of limits that have room now (the periodic sweep)."""
        wake: list[bytes | str] = []
        now = int(time.time() * 1000)
        for line in await self.redis.smembers(LINES):  # type: ignore[misc]
            name = _text(line).removeprefix(LINE_PREFIX)
            size = self.limits.size_of(name)
            if size is None:  # a line of a limit no longer configured: nobody can free it
                continue
            wake += await self._sweep(keys=[PREFIX + name, _text(line), LINES], args=[now, size])
        return arrivals(wake)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def arrivals(flat: Sequence[bytes | str]) -> dict[str, float]:
    """Lua's id, arrival, id, arrival... as {id: arrival ms}, in line order, each id once."""
    in_order: dict[str, float] = {}
    for index in range(0, len(flat) - 1, 2):
        in_order.setdefault(_text(flat[index]), float(flat[index + 1]))
    return in_order
