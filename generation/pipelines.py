"""The steps every kind's pipeline is made of, shared by both plans: fetch the user's input, create the
provider's job (its id journaled before it is awaited), await it (polling, or woken by a webhook),
fetch the output, deliver it to the chat. Each kind composes these in generation/kinds/.

Settling (charge what was delivered, refund the rest) is done by generation/execution.py around every
pipeline alike.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

from loguru import logger
from sqlalchemy import String, cast, select

from generation import lifecycle, progress
from generation.catalog import CatalogModel
from generation.delivery import DOWNLOAD_LIMIT, UPLOAD_LIMIT, InputTooLarge, Media
from generation.services import Services
from generation.steps import StepJournal
from generation.store import Generation, Step, as_utc
from generation.texts import text
from providers.errors import ProviderFailed, ProviderRejected, ProviderUnavailable
from providers.guarded_fetch import FetchedFile, FetchTooLarge
from providers.replicate import PredictionState, output_urls


class StillWaiting(Exception):
    """The provider is still working. Plan A ends the try and comes back after `delay` (or when a
    webhook wakes it) without holding a worker slot and without counting a failure."""

    def __init__(self, delay: float) -> None:
        super().__init__(f"still waiting; look again in {delay:.0f}s")
        self.delay = delay


# What a run enters while it only waits (PipelineContext.idle).
Idle = Callable[[], AbstractAsyncContextManager[None]]


@dataclass
class PipelineContext:
    services: Services
    generation: Generation
    model: CatalogModel
    steps: StepJournal
    language: str
    wait_budget: float  # how long this try may wait on the provider before StillWaiting (Plan A)
    can_defer: bool = False  # Plan A can end a try and come back; Plan B waits inline
    # Around the pauses between two looks at a provider's job: Plan B's run gives up its place among
    # the runs working at once in its process (fallback/inline.py) meanwhile.
    idle: Idle = nullcontext

    @property
    def request(self) -> dict[str, Any]:
        return self.generation.request

    @property
    def can_deliver(self) -> bool:
        return self.generation.chat_id is not None and self.services.delivery.can_deliver(
            self.generation.bot_name
        )

    @property
    def chat_id(self) -> int:
        assert self.generation.chat_id is not None
        return self.generation.chat_id

    def webhook_url(self, step: str) -> str | None:
        """Where Replicate should call back for this step, when callbacks can reach and be verified."""
        settings = self.services.settings
        if not settings.webhook_base_url or settings.replicate_webhook_secret is None:
            return None
        return f"{settings.webhook_base_url}/webhooks/replicate?generation={self.generation.id}&step={step}"


@dataclass
class Delivered:
    """What reached the user: `units` is what they pay for (images delivered, or 1)."""

    units: int
    result: dict[str, Any] = field(default_factory=dict)


Pipeline = Callable[[PipelineContext], Awaitable[Delivered]]


# --- awaiting a provider's job --------------------------------------------------------------------


async def await_provider_job(
    ctx: PipelineContext,
    step: str,
    fetch: Callable[[str], Awaitable[PredictionState]],
    cancel: Callable[[str], Awaitable[None]],
    deadline: float,
    *,
    waited: float = 0.0,
) -> PredictionState:
    """Wait for the job whose id is journaled as `<step>:id` to end; its final state is journaled as
    `<step>:result` (by this poll, or by the provider's webhook, whichever comes first).

    A job that outlives `deadline` seconds is cancelled at the provider and fails (refund). `waited`:
    seconds this try already spent waiting for it (a create that waited), taken from its budget."""
    job_id: str = await ctx.steps.saved(f"{step}:id")
    give_up_at: float = await ctx.steps.run(f"{step}:deadline", _after(deadline))
    started_at = give_up_at - deadline  # journaled on the first wait: the same clock on every rerun
    poll_interval = ctx.services.settings.replicate_poll_interval
    try_ends_at = time.monotonic() + ctx.wait_budget - waited
    # The first look trusts the journal as this run read it (a job created a moment ago has no
    # webhook result yet); after each pause the database is read again, as a webhook may have
    # journaled the result meanwhile and saves a poll.
    journaled = await ctx.steps.saved(f"{step}:result")
    while True:
        if journaled is not None:
            return PredictionState.from_json(journaled)
        state = await fetch(job_id)
        if state.is_terminal:
            # Journaled with the next write (the delivery's mark, or the settling of a failure): a
            # crash before it costs one more poll.
            return PredictionState.from_json(await ctx.steps.keep(f"{step}:result", state.as_json()))
        if time.time() >= give_up_at:
            await _cancel_quietly(cancel, job_id)
            raise ProviderFailed(f"{step} {job_id} did not finish in {deadline:.0f}s; cancelled")
        if time.monotonic() >= try_ends_at:
            if ctx.can_defer:
                raise StillWaiting(delay=ctx.services.settings.long_wait_poll)
            raise ProviderUnavailable(f"{step} {job_id} still {state.status} after {ctx.wait_budget:.0f}s")
        await progress.rendering(ctx, started_at)
        async with ctx.idle():
            await asyncio.sleep(poll_interval)
        journaled = await ctx.steps.refresh(f"{step}:result")


def _after(seconds: float) -> Callable[[], Awaitable[float]]:
    async def deadline() -> float:
        return time.time() + seconds

    return deadline


async def _cancel_quietly(cancel: Callable[[str], Awaitable[None]], job_id: str) -> None:
    try:
        await cancel(job_id)
    except Exception:  # the job may have ended meanwhile; the refund does not depend on it
        return


async def run_replicate_prediction(
    ctx: PipelineContext,
    input: dict[str, Any],
    *,
    version: str | None = None,
    step: str = "prediction",
) -> PredictionState:
    """Create the prediction once (id journaled, even when the process is stopping), then wait for it;
    a rerun waits on the same id. `version` overrides the model's ref (a user's trained LoRA).

    A model with a `wait` (catalog.toml) has Replicate hold the create's answer until the prediction
    ends, for that long at most and never beyond this try's wait budget: a prediction that ends
    sooner is journaled with its id, and is not polled for."""
    replicate = ctx.services.replicate
    ref = version or ctx.model.ref
    wait = min(ctx.model.wait, int(ctx.wait_budget))

    waited = 0.0
    finished = False

    async def create() -> str:
        nonlocal waited, finished
        # While Replicate holds the answer the run only waits, as between polls; and the time counts
        # against the try's wait budget, so a job holds its worker's slot no longer than before.
        asked_at = time.monotonic()
        async with ctx.idle() if wait else nullcontext():
            state = await replicate.create_prediction(ref, input, webhook=ctx.webhook_url(step), wait=wait)
        waited = time.monotonic() - asked_at if wait else 0.0
        if state.is_terminal:
            # Free to read again, so kept for the id's own write rather than written apart.
            await ctx.steps.keep(f"{step}:result", state.as_json())
            finished = True
        return state.id

    async def find_lost(since: float) -> str | None:
        return await replicate.find_prediction(ref, input, since, lambda job_id: job_taken(ctx, step, job_id))

    deadline = ctx.services.settings.generation_deadline
    # A prediction that came back finished is not awaited: its id goes with the run's next write (the
    # delivery's mark, or a failure's settling), one commit fewer before the result is sent.
    await create_once(ctx, step, create, find_lost, deadline=deadline, owe_if=lambda: finished)
    state = await await_provider_job(
        ctx, step, replicate.get_prediction, replicate.cancel, deadline, waited=waited
    )
    raise_if_unsuccessful(state)
    return state


# A provider's clock and ours differ; a lost job is looked for from a little before our intent.
CLOCK_SKEW = 120.0


async def create_once(
    ctx: PipelineContext,
    step: str,
    create: Callable[[], Awaitable[str]],
    find_lost: Callable[[float], Awaitable[str | None]],
    *,
    deadline: float | None = None,
    owe_if: Callable[[], bool] | None = None,
) -> str:
    """Start a paid provider job at most once and journal its id as `<step>:id` (with the moment the
    wait for it gives up, `<step>:deadline`, in the same transaction). `owe_if`: asked once the job
    started; when True its id is owed to the journal (StepJournal.owe), written with the run's next
    write rather than by a transaction of its own.

    No write comes before the call (the fast path). A run that is not the generation's first may
    follow one killed after the provider accepted the job but before its id was journaled: it looks
    for that job (`find_lost`, since the generation was recorded) before paying for a new one."""
    saved = await ctx.steps.saved(f"{step}:id")
    if saved is not None:
        return str(saved)
    # Journals written before this release kept an explicit intent; either tells of an earlier run.
    intent = await ctx.steps.saved(f"{step}:intent")
    earlier_run = intent is not None or ctx.generation.attempts > 1
    since = float(intent) if intent is not None else as_utc(ctx.generation.created_at).timestamp()

    async def adopt_or_create() -> str:
        if earlier_run:
            lost = await find_lost(since - CLOCK_SKEW)
            if lost is not None:
                logger.bind(generation=ctx.generation.id).warning(
                    "found the {} lost in a crash: {}", step, lost
                )
                return lost
        return await create()

    also = {f"{step}:deadline": time.time() + deadline} if deadline is not None else None
    job_id: str = await ctx.steps.run(f"{step}:id", adopt_or_create, shielded=True, also=also, owe_if=owe_if)
    return job_id


async def provider_job_started(steps: StepJournal) -> bool:
    """Whether a provider's job was started already: a rerun then resumes waiting on it rather than
    starting anew."""
    return any(name.endswith((":id", ":intent")) for name in await steps.load())


async def job_taken(ctx: PipelineContext, step: str, job_id: str) -> bool:
    """Whether another generation journaled this provider job as its own."""
    async with ctx.services.db.sessions() as session:
        owner = await session.scalar(
            select(Step.generation_id).where(
                Step.name == f"{step}:id",
                cast(Step.result, String) == json.dumps(job_id),
                Step.generation_id != ctx.generation.id,
            )
        )
    return owner is not None


async def cancel_prediction(services: Services, journal: dict[str, Any]) -> None:
    """A cancelled generation's prediction, if one was started and has not ended, is stopped."""
    if "prediction:id" in journal and "prediction:result" not in journal:
        await services.replicate.cancel(str(journal["prediction:id"]))


def raise_if_unsuccessful(state: PredictionState) -> None:
    if state.status == "succeeded":
        return
    if state.status == "canceled":
        raise ProviderFailed(f"{state.id} was canceled at the provider")
    error = (state.error or "").lower()
    # Safety filters answer a failed prediction whose error names NSFW content: the input is at fault.
    if "nsfw" in error or "safety" in error or "sensitive" in error:
        raise ProviderRejected(f"{state.id} rejected: {state.error}")
    raise ProviderFailed(f"{state.id} failed: {state.error}")


# --- the user's input files -----------------------------------------------------------------------


async def input_bytes(ctx: PipelineContext, name: str, max_bytes: int = DOWNLOAD_LIMIT) -> bytes:
    """The file a request names by `<name>_file_id` (sent in Telegram, fetched through the bot) or by
    `<name>_url` (an HTTP client's URL). Not journaled: bytes are fetched again on a rerun."""
    file_id = ctx.request.get(f"{name}_file_id")
    if file_id:
        return await ctx.services.delivery.download_file(ctx.generation.bot_name, file_id, max_bytes)
    url = ctx.request.get(f"{name}_url")
    if not url:
        raise ProviderRejected(f"the request has no {name}")
    # The provider's upload takes bytes; the fetch itself streams to a file within its cap.
    async with fetch_url(ctx.services, str(url), max_bytes) as fetched:
        return fetched.read_all()


@asynccontextmanager
async def fetch_url(services: Services, url: str, max_bytes: int) -> AsyncIterator[FetchedFile]:
    """A user-given URL's body in a temporary file: FetchRefused whatever keeps it from being fetched,
    InputTooLarge over `max_bytes`."""
    try:
        async with services.fetcher.fetch(url, max_bytes) as fetched:
            yield fetched
    except FetchTooLarge as error:
        raise InputTooLarge(str(error)) from None


async def replicate_input_url(
    ctx: PipelineContext, name: str, filename: str, content_type: str, max_bytes: int = DOWNLOAD_LIMIT
) -> str:
    """A URL Replicate can read for the user's file: a Telegram file is fetched here and uploaded to
    Replicate's files API (its URL carries the bot token and must never leave the server); an HTTP
    client's URL is passed as it is. Journaled as `<name>:url`."""

    async def upload() -> str:
        if not ctx.request.get(f"{name}_file_id") and ctx.request.get(f"{name}_url"):
            return str(ctx.request[f"{name}_url"])
        content = await input_bytes(ctx, name, max_bytes)
        return await ctx.services.replicate.upload_file(content, filename, content_type)

    url: str = await ctx.steps.run(f"{name}:url", upload)
    return url


# --- delivering outputs ---------------------------------------------------------------------------


@asynccontextmanager
async def handing_over(ctx: PipelineContext) -> AsyncIterator[None]:
    """Around the call that hands the result to the chat (an upload, a message), once its content is
    in hand: from here the user may get it, so it is journaled first, atomically against a
    cancellation (generation/lifecycle.py, `begin_delivery`), and a cancellation from now on is
    refused instead of refunding what may arrive. Raises NotRunning, sending nothing, when a
    cancellation came first. The status says it is sending and takes its Cancel button away."""
    if not await lifecycle.mark_delivery(ctx.services.db, ctx.steps):
        raise lifecycle.NotRunning(f"{ctx.generation.id} ended before its delivery")
    async with progress.sending(ctx):
        yield


async def deliver_images(ctx: PipelineContext, urls: list[str]) -> Delivered:
    """Send the images as one album (or one photo), by their URLs where the chat's service fetches
    them itself, else fetched here and uploaded; the user pays for what arrived."""
    if not urls:
        raise ProviderFailed("the prediction succeeded with no output")
    if not ctx.can_deliver:
        return Delivered(units=len(urls), result={"urls": urls})
    generation = ctx.generation
    delivery, download = ctx.services.delivery, ctx.services.replicate.download

    async def send() -> list[int]:
        async with handing_over(ctx):
            return await delivery.send_image_urls(generation.bot_name, ctx.chat_id, urls, download)

    message_ids: list[int] = await ctx.steps.run("deliver", send)
    return Delivered(
        units=min(len(message_ids), len(urls)), result={"urls": urls, "message_ids": message_ids}
    )


async def deliver_video(ctx: PipelineContext, output: Any) -> Delivered:
    """Send the video; one over Telegram's upload limit is sent as a link instead of being dropped."""
    urls = output_urls(output)
    if not urls:
        raise ProviderFailed("the prediction succeeded with no video")
    url = urls[0]
    if not ctx.can_deliver:
        return Delivered(units=1, result={"urls": [url]})
    generation = ctx.generation

    async def send() -> list[int]:
        content = await ctx.services.replicate.download_at_most(url, UPLOAD_LIMIT)
        delivery = ctx.services.delivery
        async with handing_over(ctx):
            if content is None:
                link = text("video_as_link", ctx.language, url=url)
                return [await delivery.send_text(generation.bot_name, ctx.chat_id, link)]
            video = Media(content=content, filename=f"{generation.id}.mp4")
            return [await delivery.send_video(generation.bot_name, ctx.chat_id, video)]

    message_ids: list[int] = await ctx.steps.run("deliver", send)
    return Delivered(units=1, result={"urls": [url], "message_ids": message_ids})
