"""The status message a generation shows while it works, edited as it moves through its stages.

One message per generation (journaled as `status_message`, like every step, so a rerun or another
process edits the same one); it carries a Cancel button until the result is being sent (a cancellation
can no longer win then: generation/lifecycle.py) and is removed when the result or the failure message
is sent (generation/execution.py). Both plans show the same stages through the same functions here;
they differ only in where they call them.

Edits are a courtesy: Telegram allows about one message a second per chat and answers more with a
429, so every chat gets at most one edit every `progress_edit_interval` seconds (whichever of its
generations asks), a 429's `retry_after` pauses that chat's statuses, and an edit that fails, times
out or is throttled is skipped, never raised and never waited for. Callers that matter call again:
the provider wait on every poll, a generation waiting for a slot on every look at the limiter. Only a
generation's first status goes out whatever the interval (the user must not wait in silence); it
still counts against the chat. The sending status, which takes the Cancel button away, is not skipped
either: it waits for the chat's turn, alongside the upload (`sending`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import weakref
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol, TypeVar

from loguru import logger
from sqlalchemy import and_, bindparam, func, or_, select
from sqlalchemy.orm import aliased

from generation.delivery import Button, ChatDelivery, DeliveryRefused, DeliveryRetryLater
from generation.direct_statements import Prepared
from generation.lifecycle import DELIVERING_STEP
from generation.services import Services
from generation.steps import StepJournal
from generation.store import Generation, GenerationStatus, User
from generation.texts import count_of, text

STATUS_STEP = "status_message"
# The Cancel button on the status message; bot/telegram/routers/cancel.py answers it.
CANCEL_CALLBACK = "cancel:"
# An edit Telegram has not answered by then is given up: the generation does not wait on it.
EDIT_TIMEOUT = 3.0
# A chat whose status timed out, was refused, or met network trouble without a retry_after is left
# alone this long.
TROUBLED_CHAT_PAUSE = 30.0
# How often a wait with no retry of its own (Plan B's limiter) refreshes its place in line, at most.
REPORT_EVERY_AT_LEAST = 1.0
# How often a status that must go out looks again for its chat's turn when only its bot's budget
# (over all chats) holds it back.
TURN_LOOKS_EVERY = 0.05

_T = TypeVar("_T")


class Stage(StrEnum):
    queued = "queued"  # back in the queue after a failed try, waiting for a worker to take it again
    waiting_slot = "waiting_slot"  # over a concurrency limit: waits for a free slot, with its place
    working = "working"  # a runner has it: fetching the input, starting the provider's job
    rendering = "rendering"  # the provider works on it; the elapsed time is shown
    sending = "sending"  # the result is on its way to the chat


# The text of each stage that has one fixed text; "working" is the status's first text since day one.
STAGE_TEXTS = {
    Stage.queued: "progress_queued",
    Stage.working: "working",
    Stage.rendering: "progress_rendering",
    Stage.sending: "progress_sending",
}


class Target(Protocol):
    """Whose status message: a running pipeline's context (generation/pipelines.py), or `Subject`."""

    @property
    def services(self) -> Services: ...

    @property
    def generation(self) -> Generation: ...

    @property
    def language(self) -> str: ...

    @property
    def steps(self) -> StepJournal: ...


@dataclass(frozen=True)
class Subject:
    """A generation's status outside its pipeline: a runner before it claims it, or between tries."""

    services: Services
    generation: Generation
    language: str
    steps: StepJournal


async def subject_of(services: Services, generation: Generation) -> Subject:
    async with services.db.sessions() as session:
        language = await session.scalar(select(User.language).where(User.id == generation.user_id))
    return Subject(services, generation, language or "en", StepJournal(services.db, generation.id))


# --- the per-chat throttle ------------------------------------------------------------------------

ChatKey = tuple[str, int]  # (bot name, chat id): Telegram's limits are per bot and chat


class ChatThrottle:
    """When each chat may next get an edit: at most one every `interval` seconds, and nothing at all
    (not even a new status message) while a 429's `retry_after` runs. In-process: a generation runs
    in one process at a time, and a chat's generations mostly run in the same one."""

    # Past this many chats, those free again are forgotten (users come and go).
    PRUNE_AT = 10_000

    def __init__(
        self, interval: float, clock: Callable[[], float] = time.monotonic, *, per_bot_per_second: float = 0.0
    ) -> None:
        self.interval = interval
        self.clock = clock
        self._next_edit: dict[ChatKey, float] = {}
        self._paused_until: dict[ChatKey, float] = {}
        # Each bot's edits over all its chats: a token bucket of `per_bot_per_second` (0: unbounded).
        self.per_bot_per_second = per_bot_per_second
        self._bot_tokens: dict[str, tuple[float, float]] = {}  # bot -> (tokens, when counted)

    def due_in(self, chat: ChatKey) -> float:
        """Seconds until the chat may have an edit (0: now)."""
        until = max(self._next_edit.get(chat, 0.0), self._paused_until.get(chat, 0.0))
        return max(until - self.clock(), 0.0)

    def ready(self, chat: ChatKey) -> bool:
        return self.due_in(chat) == 0.0

    def paused(self, chat: ChatKey) -> bool:
        return self._paused_until.get(chat, 0.0) > self.clock()

    def bot_has_budget(self, bot: str) -> bool:
        """Whether the bot may make another edit now (its per-second budget over all chats)."""
        return self._bot_tokens_now(bot) >= 1.0

    def take(self, chat: ChatKey) -> bool:
        """Claim the chat's next edit: False when it is not due yet, or its bot spent its budget."""
        if not self.ready(chat):
            return False
        if self.per_bot_per_second > 0:
            tokens = self._bot_tokens_now(chat[0])
            if tokens < 1.0:
                return False
            self._bot_tokens[chat[0]] = (tokens - 1.0, self.clock())
        self._prune()
        self._next_edit[chat] = self.clock() + self.interval
        return True

    def _bot_tokens_now(self, bot: str) -> float:
        rate = self.per_bot_per_second
        if rate <= 0:
            return float("inf")
        now = self.clock()
        tokens, counted_at = self._bot_tokens.get(bot, (rate, now))
        return min(rate, tokens + (now - counted_at) * rate)

    def note_sent(self, chat: ChatKey) -> None:
        """A message that went out whatever the interval (a generation's first status: the user must
        hear at once) still counts against the chat."""
        self._next_edit[chat] = max(self._next_edit.get(chat, 0.0), self.clock() + self.interval)

    def hold_off(self, chat: ChatKey, seconds: float) -> None:
        """Nothing for the chat before `seconds` from now (Telegram's retry_after); never shortens."""
        until = self.clock() + seconds
        self._paused_until[chat] = max(self._paused_until.get(chat, until), until)

    def _prune(self) -> None:
        if len(self._next_edit) + len(self._paused_until) >= self.PRUNE_AT:
            now = self.clock()
            self._next_edit = {chat: at for chat, at in self._next_edit.items() if at > now}
            self._paused_until = {chat: at for chat, at in self._paused_until.items() if at > now}


@dataclass(frozen=True)
class Shown:
    """A status as shown: its text, and whether it has the Cancel button."""

    text: str
    cancelable: bool


@dataclass
class _Board:
    """One process's view of the status messages it shows through one delivery (its bots)."""

    throttle: ChatThrottle
    # The last status shown per generation (its text, and whether it had the Cancel button): asking
    # for it again costs no edit, and a generation found here has its status message already.
    shown: OrderedDict[str, Shown] = field(default_factory=OrderedDict)
    # When each waiting generation's place in line was last counted.
    looked: OrderedDict[str, float] = field(default_factory=OrderedDict)

    REMEMBERED = 4096  # generations; older ones are forgotten first

    def remember(self, generation_id: str, shown: Shown) -> None:
        _put(self.shown, generation_id, shown, self.REMEMBERED)

    def look_due(self, generation_id: str) -> bool:
        """Whether to count a waiting generation's place again: at most once per edit interval (and
        per second), though its runner looks at the limiter more often than that."""
        now = self.throttle.clock()
        last = self.looked.get(generation_id)
        if last is not None and now - last < max(self.throttle.interval, REPORT_EVERY_AT_LEAST):
            return False
        _put(self.looked, generation_id, now, self.REMEMBERED)
        return True

    def edit_not_due(self, generation: Generation) -> bool:
        """Cheap to ask before any query: its status is known to exist and the chat's edit is not due,
        or the chat is paused by Telegram."""
        chat = _chat(generation)
        known = generation.id in self.shown
        return self.throttle.paused(chat) or (
            known and not (self.throttle.ready(chat) and self.throttle.bot_has_budget(chat[0]))
        )


def _put(remembered: OrderedDict[str, _T], key: str, value: _T, limit: int) -> None:
    remembered[key] = value
    remembered.move_to_end(key)
    while len(remembered) > limit:
        remembered.popitem(last=False)


# Keyed by the delivery rather than held in a global: each app (and each test's app) in a process has
# its own bots, chats and settings.
_boards: weakref.WeakKeyDictionary[ChatDelivery, _Board] = weakref.WeakKeyDictionary()


def _board(services: Services) -> _Board:
    board = _boards.get(services.delivery)
    if board is None:
        throttle = ChatThrottle(
            services.settings.progress_edit_interval,
            per_bot_per_second=services.settings.progress_edits_per_second,
        )
        board = _boards[services.delivery] = _Board(throttle)
    return board


def _chat(generation: Generation) -> ChatKey:
    return (generation.bot_name, generation.chat_id or 0)


def _can_show(services: Services, generation: Generation) -> bool:
    return generation.chat_id is not None and services.delivery.can_deliver(generation.bot_name)


# --- showing a stage ------------------------------------------------------------------------------


async def show_started(target: Target, *, resuming: bool) -> None:
    """A run has the generation. The first time the status message is sent at once, and a chat that
    refuses it raises (the try then fails before any paid call, as for a blocked bot). Later runs say
    it is working again, unless `resuming` a provider's job: the rendering status follows at once,
    and flicking back to "working" in between would only spend the chat's edits."""
    services, generation = target.services, target.generation
    if not _can_show(services, generation):
        return
    if await target.steps.saved(STATUS_STEP) is None:
        working = text(STAGE_TEXTS[Stage.working], target.language)
        await _send(target, Shown(working, await _cancelable(target)))
    elif not resuming:
        await update(target, Stage.working)


async def update(target: Target, stage: Stage) -> None:
    """Show a stage with a fixed text (queued, working, sending)."""

    async def compose() -> str:
        return text(STAGE_TEXTS[stage], target.language)

    await _show(target, compose)


@contextlib.asynccontextmanager
async def sending(target: Target) -> AsyncIterator[None]:
    """Around the hand-over of the result (after its delivery was journaled as begun): the status says
    it is being sent, and loses its Cancel button. Unlike other stages this edit is not skipped when
    the chat's turn has not come (the button must go): it waits for the turn, alongside the upload,
    never holding the result back. Once the result is sent, an edit still waiting is dropped (the
    status is about to be removed); one under way is let finish, so it cannot land after that."""
    editing = asyncio.Event()

    async def show() -> None:
        await _chat_turn(target.services, target.generation)
        editing.set()
        await update(target, Stage.sending)

    task = asyncio.create_task(show(), name=f"sending-status-{target.generation.id}")
    try:
        yield
    finally:
        if not editing.is_set():
            task.cancel()
        await asyncio.wait([task])


async def _chat_turn(services: Services, generation: Generation) -> None:
    """Until the chat may have an edit (its interval, a 429's pause, its bot's budget)."""
    throttle = _board(services).throttle
    chat = _chat(generation)
    # A clock, not an event: the turn comes when time passes, whoever else edits meanwhile.
    while True:
        if throttle.ready(chat) and throttle.bot_has_budget(chat[0]):
            return
        await asyncio.sleep(max(throttle.due_in(chat), TURN_LOOKS_EVERY))


async def rendering(target: Target, started_at: float) -> None:
    """The provider is at work since `started_at` (epoch seconds): show for how long."""

    async def compose() -> str:
        elapsed = format_elapsed(time.time() - started_at)
        return text(STAGE_TEXTS[Stage.rendering], target.language, elapsed=elapsed)

    await _show(target, compose)


async def waiting_for_slot(
    services: Services,
    generation: Generation,
    limit: str,
    *,
    subject: Subject | None = None,
    place: Callable[[], int | None] | None = None,
) -> Subject | None:
    """The generation waits for a free slot of `limit` (a limiter's name for it: "user:7",
    "provider:replicate", "global"...): say so, with its place in line. Both plans call this each
    time they look at their limiter; the place is only counted when something may be shown, from
    `place` when the limiter knows it (Plan B's, in memory), else from the database. Answers the
    `subject` to pass again next time (it saves reading the user and the journal again)."""
    board = _board(services)
    if not _can_show(services, generation) or board.edit_not_due(generation):
        return subject
    if generation.id in board.shown and not board.look_due(generation.id):
        return subject
    if subject is None:
        try:
            subject = await subject_of(services, generation)
        except Exception as error:  # the database is having a moment: the next look tells the user
            logger.bind(generation=generation.id).debug("no status this time: {!r}", error)
            return None
    known = subject

    async def compose() -> str:
        return await _waiting_text(known, limit, place() if place is not None else None)

    await _show(subject, compose)
    return subject


@contextlib.asynccontextmanager
async def told_while_waiting(
    services: Services,
    generation: Generation,
    limit: str,
    *,
    place: Callable[[], int | None] | None = None,
) -> AsyncIterator[None]:
    """Around a wait that has no retries of its own to report from (Plan B's in-process limiter): tell
    the user at once, then again every few seconds (the place in line moves as others finish)."""
    ended = asyncio.Event()
    every = max(services.settings.progress_edit_interval, REPORT_EVERY_AT_LEAST)
    throttle = _board(services).throttle

    async def tell() -> None:
        subject: Subject | None = None
        while not ended.is_set():
            subject = await waiting_for_slot(services, generation, limit, subject=subject, place=place)
            # Back as soon as the chat's next edit is due, when that is sooner: on a fixed beat this
            # could keep arriving just after another status of the chat took its turn.
            due_in = throttle.due_in(_chat(generation))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(due_in + 0.01, every) if due_in else every):
                    await ended.wait()

    task = asyncio.create_task(tell(), name=f"waiting-status-{generation.id}")
    try:
        yield
    finally:
        ended.set()
        # A status message on its way must be journaled before the run sends its own.
        await asyncio.shield(task)


async def _show(target: Target, compose: Callable[[], Awaitable[str]]) -> None:
    """Put `compose()`'s text on the status message when the chat may have an edit now, or send it
    at once when the generation has none yet (the user must not wait in silence). Never raises: a
    status is never a reason to fail or to wait."""
    services, generation = target.services, target.generation
    if not _can_show(services, generation):
        return
    board = _board(services)
    chat = _chat(generation)
    log = logger.bind(generation=generation.id)
    if board.edit_not_due(generation):
        return
    try:
        message_id = await target.steps.saved(STATUS_STEP)
        if message_id is not None and not (
            board.throttle.ready(chat) and board.throttle.bot_has_budget(chat[0])
        ):
            return
        wanted = Shown(await compose(), await _cancelable(target))
        if message_id is not None and board.shown.get(generation.id) == wanted:
            return
        # Cancelled or settled meanwhile: its status is the cancellation's, or gone. Not to be asked
        # once its delivery has begun: a cancellation is refused from then on, and this run settles it.
        delivering = await target.steps.is_done(DELIVERING_STEP)
        if not delivering and not await _still_active(services, generation.id):
            return
        if message_id is None:
            # Not bounded in time: a send given up on could still arrive, as a status never removed.
            await _send(target, wanted)
            return
        if not board.throttle.take(chat):
            return
        async with asyncio.timeout(EDIT_TIMEOUT):
            await services.delivery.edit_text(
                generation.bot_name, chat[1], int(message_id), wanted.text, buttons=_buttons(target, wanted)
            )
        board.remember(generation.id, wanted)
    except DeliveryRetryLater as error:
        pause = error.retry_after if error.retry_after is not None else TROUBLED_CHAT_PAUSE
        board.throttle.hold_off(chat, pause)
        log.info("status edits of this chat paused for {:.0f}s: {}", pause, error)
    except (TimeoutError, DeliveryRefused) as error:
        # Telegram hangs, the bot was blocked, the message was deleted: asking again at once would
        # fail the same way (the result's delivery reports a chat lost for good).
        board.throttle.hold_off(chat, TROUBLED_CHAT_PAUSE)
        log.info(
            "status not shown ({!r}); this chat's statuses paused for {:.0f}s", error, TROUBLED_CHAT_PAUSE
        )
    except Exception as error:  # never a reason to fail the generation
        log.warning("status not shown: {!r}", error)


async def _send(target: Target, shown: Shown) -> None:
    """Send the status message, once per generation (journaled); it counts against the chat's edits."""
    generation = target.generation
    chat = _chat(generation)
    board = _board(target.services)
    delivery = target.services.delivery
    board.throttle.note_sent(chat)
    # Its id is journaled for the settle to remove the message: not worth a sync of its own.
    await target.steps.run(
        STATUS_STEP,
        lambda: delivery.send_text(generation.bot_name, chat[1], shown.text, buttons=_buttons(target, shown)),
        durable=False,
    )
    board.remember(generation.id, shown)


async def _cancelable(target: Target) -> bool:
    """Whether to offer Cancel: not once the result is being handed to the chat (a cancellation is
    refused from then on, and a button that cannot work only invites a disappointment)."""
    return not await target.steps.is_done(DELIVERING_STEP)


def _buttons(target: Target, shown: Shown) -> list[Button] | None:
    if not shown.cancelable:
        return None  # an edit without buttons removes the keyboard
    return [Button(text("cancel_button", target.language), CANCEL_CALLBACK + target.generation.id)]


async def _still_active(services: Services, generation_id: str) -> bool:
    async with services.db.direct_reads() as direct:
        status = (await direct.execute(_STATUS, {"generation_id": generation_id})).scalar()
    return status in (GenerationStatus.queued, GenerationStatus.running)


_STATUS = Prepared(select(Generation.status).where(Generation.id == bindparam("generation_id")))


# --- what the stages say --------------------------------------------------------------------------


async def _waiting_text(subject: Subject, limit: str, place: int | None = None) -> str:
    if place is None:
        place = await place_in_line(subject.services, subject.generation, limit)
    language = subject.language
    if limit.partition(":")[0] == "user":
        running = count_of(subject.services.settings.limit_per_user, "generation", language)
        return text("progress_waiting_own", language, running=running, place=place)
    return text("progress_waiting_busy", language, place=place)


async def place_in_line(services: Services, generation: Generation, limit: str) -> int:
    """1 + the generations of the same limit and plan still waiting to start (queued) that were
    recorded before this one. The database knows this for both plans alike; ties on the recording
    time (SQLite keeps whole seconds) are broken by id, so two waiting generations never share a place."""
    scope, _, name = limit.partition(":")
    me = aliased(Generation)
    query = (
        select(func.count())
        .select_from(Generation)
        .join(me, me.id == generation.id)
        .where(
            Generation.plan == me.plan,
            Generation.status == GenerationStatus.queued,
            or_(
                Generation.created_at < me.created_at,
                and_(Generation.created_at == me.created_at, Generation.id < me.id),
            ),
        )
    )
    if scope == "user":
        query = query.where(Generation.user_id == me.user_id)
    elif scope in ("provider", "rate"):
        models = [model.id for model in services.catalog.models.values() if model.provider == name]
        query = query.where(Generation.model.in_(models))
    async with services.db.sessions() as session:
        ahead = await session.scalar(query)
    return 1 + int(ahead or 0)


def format_elapsed(seconds: float) -> str:
    """0:42, 12:05, 1:02:03: a clock, the same in every language."""
    whole = max(int(seconds), 0)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}:{minutes:02d}:{secs:02d}"
    return f"{minutes}:{secs:02d}"
