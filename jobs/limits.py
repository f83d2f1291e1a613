"""Concurrency limits for Plan A, shared by every worker through Redis: generations in flight per user,
per provider and overall, and provider creates per minute.

A generation holds its slots from its first run until it settles, waits included (it is running at
the provider even while no worker holds it). Each slot is a sorted-set member scored by when it
expires, refreshed on every run: a worker that dies frees its slots when they expire. One Lua script
checks and takes all slots at once, so two workers never both take the last one.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

from arq.connections import ArqRedis

from generation.limits import Limits

PREFIX = "aibot:limits:"

# KEYS: the slot sets, then the per-minute window when ARGV[4] is 1.
# ARGV: member, now (ms), expiry (ms), has window (0/1), the window's limit, then each slot set's limit.
_ACQUIRE = """
local member, now, expires = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local has_window = ARGV[4] == '1'
local slots = #KEYS
if has_window then slots = #KEYS - 1 end
for i = 1, slots do
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now)
  if not redis.call('ZSCORE', KEYS[i], member) then
    if redis.call('ZCARD', KEYS[i]) >= tonumber(ARGV[5 + i]) then return {i, 0} end
  end
end
if has_window then
  local window = KEYS[#KEYS]
  redis.call('ZREMRANGEBYSCORE', window, '-inf', now - 60000)
  if not redis.call('ZSCORE', window, member) then
    if redis.call('ZCARD', window) >= tonumber(ARGV[5]) then
      local oldest = redis.call('ZRANGE', window, 0, 0, 'WITHSCORES')
      return {#KEYS, tonumber(oldest[2]) + 60000 - now}
    end
    redis.call('ZADD', window, now, member)
    redis.call('PEXPIRE', window, 61000)
  end
end
for i = 1, slots do
  redis.call('ZADD', KEYS[i], expires, member)
  redis.call('PEXPIRE', KEYS[i], expires - now + 1000)
end
return {0, 0}
"""


@dataclass(frozen=True)
class Refusal:
    """Which limit is full, and when to look again (seconds)."""

    limit: str
    retry_in: float


class ConcurrencyLimiter:
    def __init__(self, redis: ArqRedis, limits: Limits, slot_ttl: float) -> None:
        self.redis = redis
        self.limits = limits
        self.slot_ttl = slot_ttl
        self._script = redis.register_script(_ACQUIRE)

    def _slot_keys(self, user_id: int, provider: str) -> list[tuple[str, int]]:
        return [(PREFIX + name, size) for name, size in self.limits.slots(user_id, provider)]

    async def acquire(self, generation_id: str, user_id: int, provider: str) -> Refusal | None:
        """Take (or refresh) every slot of this generation; None when taken, else which one is full."""
        slots = self._slot_keys(user_id, provider)
        keys = [key for key, _ in slots]
        rate = self.limits.creates_per_minute.get(provider)
        if rate is not None:
            keys.append(f"{PREFIX}rate:{provider}")
        now = int(time.time() * 1000)
        arguments: list[str | int] = [generation_id, now, now + int(self.slot_ttl * 1000)]
        arguments += [1 if rate is not None else 0, rate or 0]
        arguments += [limit for _, limit in slots]
        full, wait_ms = await self._script(keys=keys, args=arguments)
        if int(full) == 0:
            return None
        name = keys[int(full) - 1].removeprefix(PREFIX)
        # Waiting generations look again soon, spread out so they do not all come back at once.
        retry_in = max(float(wait_ms) / 1000, 0.5) + random.uniform(0, 0.5)
        return Refusal(limit=name, retry_in=retry_in)

    async def release(self, generation_id: str, user_id: int, provider: str) -> None:
        pipe = self.redis.pipeline(transaction=False)
        for key, _ in self._slot_keys(user_id, provider):
            pipe.zrem(key, generation_id)
        await pipe.execute()
