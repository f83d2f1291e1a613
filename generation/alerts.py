"""Alerts to the admins in Telegram, through the default bot: a provider account out of credit or
refusing our credentials, too many generations failing, the queue's breaker open (Plan B in force),
the queue backing up.

One job: decide whether an alert goes out, and send it. Each alert has a key. The same key goes out at
most once per ALERT_REPEAT_AFTER, and once its condition clears, "back to normal" goes out once. What
was told is kept in the database every process shares (a RuntimeFlag row per key, changed only by a
compare-and-set), so of several processes, and across restarts, one alone sends each.

An alert names what is wrong (the provider, the error's class, counts), never a user's data. Deciding
or sending an alert never fails what it was called from: trouble with it is logged and dropped.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from loguru import logger
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError

from generation.services import Services
from generation.store import Generation, GenerationStatus, RuntimeFlag, User
from generation.texts import text
from providers.errors import ProviderMisconfigured, ProviderQuotaExceeded

FLAG_PREFIX = "alert:"
PROVIDER_KEY = "provider"
FAILURE_RATE_KEY = "failure_rate"
BREAKER_KEY = "breaker"
QUEUE_DEPTH_KEY = "queue_depth"
# The length of RuntimeFlag.key.
LONGEST_FLAG = 64

QueueDepth = Callable[[], Awaitable[int]]


@dataclass(frozen=True)
class Notice:
    """An alert's text: a key of generation/texts/*.toml and its fields, rendered per admin."""

    text_key: str
    fields: Mapping[str, object] = field(default_factory=dict)

    def render(self, language: str) -> str:
        return text(self.text_key, language, **self.fields)


@dataclass(frozen=True)
class Mark:
    """What a key's flag holds: whether its condition holds (`raised`) and since when, whether the
    admins were told of it, and when they were last told of a raise (what the repeat limit counts
    from; kept through a clear, so a condition that comes and goes is not told of each time)."""

    raised: bool
    since: float
    told: bool
    told_at: float

    def encode(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def decode(cls, value: str | None) -> Mark | None:
        try:
            fields = json.loads(value) if value else None
            return cls(**fields) if isinstance(fields, dict) else None
        except (ValueError, TypeError):  # not ours, or from another version: start afresh
            return None


class Alerts:
    def __init__(self, services: Services, clock: Callable[[], float] = time.time) -> None:
        self.services = services
        self.settings = services.settings
        self.db = services.db
        self.clock = clock

    # --- the conditions ------------------------------------------------------------------------------

    async def provider_error(self, provider: str, error: BaseException) -> None:
        """A step failed on an error only an operator can fix: tell the admins at its first one."""
        if isinstance(error, ProviderQuotaExceeded):
            notice = "alert_provider_quota"
        elif isinstance(error, ProviderMisconfigured):
            notice = "alert_provider_misconfigured"
        else:
            return
        error_class = type(error).__name__
        key = f"{PROVIDER_KEY}:{provider}:{error_class}"
        await self.raise_alert(key, Notice(notice, {"provider": provider, "error": error_class}))

    async def plan_changed(self, old: str, new: str, reason: str) -> None:
        """The dispatcher's breaker opened (Plan B in force) or closed again (back to Plan A)."""
        notice = Notice("plan_changed_notice", {"old": old, "new": new, "reason": reason})
        if new == "B":
            await self.raise_alert(BREAKER_KEY, notice)
        else:
            await self.clear_alert(BREAKER_KEY, notice)

    async def check(self, queue_depth: QueueDepth | None = None) -> None:
        """The periodic look (ALERT_CHECK_EVERY): the failure rate, the queue's depth, and whether a
        provider alerted on works again."""
        await self._guarded("look at the failure rate", self._check_failure_rate())
        if queue_depth is not None:
            await self._guarded("look at the queue's depth", self._check_queue_depth(queue_depth))
        await self._guarded("look at the providers alerted on", self._check_providers_recovered())

    async def _check_failure_rate(self) -> None:
        window = self.settings.alert_window
        since = datetime.now(UTC) - timedelta(minutes=window)
        async with self.db.sessions() as session:
            rows = await session.execute(
                select(Generation.status, func.count())
                .where(
                    Generation.finished_at >= since,
                    Generation.status.in_([GenerationStatus.done, GenerationStatus.failed]),
                )
                .group_by(Generation.status)
            )
            counts = {status: int(count) for status, count in rows}
        failed = counts.get(GenerationStatus.failed, 0)
        ended = failed + counts.get(GenerationStatus.done, 0)
        if ended < self.settings.alert_min_generations:
            return  # too few to judge: whatever was told stands
        rate = failed / ended
        fields = {"failed": failed, "ended": ended, "minutes": f"{window:g}", "percent": round(rate * 100)}
        if rate > self.settings.alert_failure_rate:
            await self.raise_alert(FAILURE_RATE_KEY, Notice("alert_failure_rate", fields))
        else:
            await self.clear_alert(FAILURE_RATE_KEY, Notice("alert_failure_rate_cleared", fields))

    async def _check_queue_depth(self, queue_depth: QueueDepth) -> None:
        try:
            depth = await asyncio.wait_for(queue_depth(), timeout=self.settings.redis_timeout)
        except Exception:  # a queue that does not answer is the breaker's alert, not this one
            return
        threshold = self.settings.alert_queue_depth
        if depth > threshold:
            await self.raise_alert(
                QUEUE_DEPTH_KEY, Notice("alert_queue_depth", {"depth": depth, "threshold": threshold})
            )
        else:
            await self.clear_alert(QUEUE_DEPTH_KEY, Notice("alert_queue_depth_cleared", {"depth": depth}))

    async def _check_providers_recovered(self) -> None:
        """A provider alert clears once a generation on that provider has succeeded since it was raised."""
        recovered: list[str] = []
        async with self.db.sessions() as session:
            flags = await session.execute(
                select(RuntimeFlag.key, RuntimeFlag.value).where(
                    RuntimeFlag.key.startswith(f"{FLAG_PREFIX}{PROVIDER_KEY}:")
                )
            )
            raised = {key: mark for key, value in flags if (mark := Mark.decode(value)) and mark.raised}
            for flag, mark in raised.items():
                provider = flag.split(":")[2]
                models = [
                    model.id for model in self.services.catalog.models.values() if model.provider == provider
                ]
                succeeded = await session.scalar(
                    select(Generation.id)
                    .where(
                        Generation.status == GenerationStatus.done,
                        Generation.model.in_(models),
                        Generation.finished_at > datetime.fromtimestamp(mark.since, UTC),
                    )
                    .limit(1)
                )
                if succeeded is not None:
                    recovered.append(flag)
        for flag in recovered:
            provider = flag.split(":")[2]
            await self.clear_alert(
                flag.removeprefix(FLAG_PREFIX), Notice("alert_provider_cleared", {"provider": provider})
            )

    # --- deciding and telling ------------------------------------------------------------------------

    async def raise_alert(self, key: str, notice: Notice) -> bool:
        """The condition of `key` holds: tell the admins unless they were told of it within
        ALERT_REPEAT_AFTER. True when this call told them."""

        def raised(mark: Mark | None, now: float) -> tuple[Mark | None, bool]:
            if mark is None or now - mark.told_at >= self.settings.alert_repeat_after * 60:
                return Mark(True, mark.since if mark and mark.raised else now, True, now), True
            if mark.raised:
                return mark, False  # told of lately, or held back since: nothing changes
            # Back soon after it cleared: noted, but the admins heard of it lately.
            return Mark(True, now, False, mark.told_at), False

        return bool(await self._guarded(f"raise alert {key}", self._change(key, raised, notice)))

    async def clear_alert(self, key: str, notice: Notice) -> bool:
        """The condition of `key` no longer holds: say so once, if the admins were told it did."""

        def cleared(mark: Mark | None, now: float) -> tuple[Mark | None, bool]:
            if mark is None or not mark.raised:
                return mark, False
            return Mark(False, now, False, mark.told_at), mark.told

        return bool(await self._guarded(f"clear alert {key}", self._change(key, cleared, notice)))

    async def _change(
        self, key: str, decide: Callable[[Mark | None, float], tuple[Mark | None, bool]], notice: Notice
    ) -> bool:
        flag = (FLAG_PREFIX + key)[:LONGEST_FLAG]
        async with self.db.sessions() as session:
            current = await session.scalar(select(RuntimeFlag.value).where(RuntimeFlag.key == flag))
        before = Mark.decode(current)
        after, tell = decide(before, self.clock())
        if after is None or after == before or not await self._swap(flag, current, after.encode()):
            return False  # nothing changes, or another process changed it first (and tells, if due)
        if tell:
            logger.warning("alert {}: {}", key, notice.render("en"))
            await self._tell_admins(notice)
        else:
            logger.info("alert {} {}, admins not told again yet", key, "holds" if after.raised else "cleared")
        return tell

    async def _swap(self, flag: str, expected: str | None, value: str) -> bool:
        """Set the flag to `value` only if it still holds `expected` (None: no row yet). Of processes
        racing for one change, one alone succeeds: the UPDATE's condition, or the key's uniqueness."""
        try:
            async with self.db.transaction() as session:
                if expected is None:
                    session.add(RuntimeFlag(key=flag, value=value))
                    await session.flush()
                    return True
                swapped = await session.execute(
                    update(RuntimeFlag)
                    .where(RuntimeFlag.key == flag, RuntimeFlag.value == expected)
                    .values(value=value)
                )
                return bool(swapped.rowcount)  # type: ignore[attr-defined]
        except IntegrityError:
            return False

    async def _tell_admins(self, notice: Notice) -> None:
        """Every admin, through the default bot, in their language when they are a user of it."""
        bot_name = self.settings.default_bot_name
        admins = self.settings.admin_ids
        if bot_name is None or not admins or not self.services.delivery.can_deliver(bot_name):
            return
        async with self.db.sessions() as session:
            rows = await session.execute(
                select(User.telegram_id, User.language).where(
                    User.bot_name == bot_name, User.telegram_id.in_(admins)
                )
            )
            languages = {telegram_id: language for telegram_id, language in rows}
        for admin_id in admins:
            try:
                await self.services.delivery.send_text(
                    bot_name, admin_id, notice.render(languages.get(admin_id, "en"))
                )
            except Exception as error:  # one admin who blocked the bot does not keep it from the others
                logger.warning("an alert did not reach an admin: {}", type(error).__name__)

    async def _guarded(self, what: str, work: Awaitable[Any]) -> Any:
        try:
            return await work
        except Exception as error:
            logger.warning("alerts: could not {}: {!r}", what, error)
            return None


async def watch(services: Services, queue_depth: QueueDepth | None) -> None:
    """The periodic check, every ALERT_CHECK_EVERY seconds, for the life of the process."""
    alerts = Alerts(services)
    while True:
        await asyncio.sleep(services.settings.alert_check_every)
        await alerts.check(queue_depth)
