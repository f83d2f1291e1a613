"""The personal LoRA: model_training (a Flux LoRA trained at Replicate on a ZIP of the user's photos)
and neuro_photo (images from the user's own trained version).

The archive is checked before anything is recorded or charged (CHECKERS, outside any transaction: it
is a download of up to 20 MB); the pipeline fetches it again rather than keeping its bytes anywhere.
"""

from __future__ import annotations

import re
from typing import Any

from loguru import logger
from sqlalchemy.ext.asyncio import AsyncSession

from generation import lifecycle
from generation.archives import MEGABYTE, TRAINING_ARCHIVE, check_training_archive
from generation.catalog import Kind
from generation.delivery import InputTooLarge
from generation.kinds.spec import KindSpec
from generation.pipelines import (
    Delivered,
    PipelineContext,
    await_provider_job,
    cancel_prediction,
    create_once,
    deliver_images,
    fetch_url,
    job_taken,
    replicate_input_url,
    run_replicate_prediction,
)
from generation.requests import InvalidRequest, Problem
from generation.services import Services
from generation.store import User
from generation.texts import text
from providers.errors import ProviderFailed, ProviderRejected, StepError
from providers.replicate import output_urls

# The same rule as requests.ModelTrainingRequest.trigger_word, checked early for a clear message.
TRIGGER_WORD = re.compile(r"^[A-Za-z0-9_]{2,32}$")
# What a training answers as its new version: "owner/name:version id".
TRAINED_VERSION = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+:[A-Za-z0-9]+$")


class TrainingFailed(ProviderFailed):
    reason = "failed_training"


def trigger_word_problem(word: str | None) -> Problem | None:
    if word is not None and TRIGGER_WORD.match(word):
        return None
    return Problem("trigger_word", "trigger_word")


# --- before the charge -----------------------------------------------------------------------------


async def check_training_request(services: Services, bot_name: str, request: dict[str, Any]) -> None:
    """Fetch the archive (through the bot, or from the client's URL) and check it; raises InvalidRequest.
    Nothing of it is kept: the pipeline fetches it again (or hands Replicate the client's URL)."""
    field = "zip_file_id" if request.get("zip_file_id") else "zip_url"
    limit = TRAINING_ARCHIVE.max_bytes
    try:
        if request.get("zip_file_id"):
            content = await services.delivery.download_file(bot_name, str(request["zip_file_id"]), limit)
            check_training_archive(content, field=field)
            return
        # A client's archive is streamed to a temporary file and judged there, never whole in memory.
        async with fetch_url(services, str(request["zip_url"]), limit) as fetched:
            check_training_archive(fetched.file, field=field)
    except InputTooLarge:
        raise InvalidRequest([Problem(field, "zip_too_large", {"limit_mb": limit // MEGABYTE})]) from None
    except StepError as error:
        # One code whatever went wrong (refused address, nothing listening, 404, too slow): a finer
        # answer would tell a client what listens where. The guarded fetch logged the real reason.
        logger.bind(user=request.get("telegram_id")).info("training archive not fetched: {}", error)
        raise InvalidRequest([Problem(field, "zip_unreachable")]) from None


async def resolve_trained_model(session: AsyncSession, user: User, request: dict[str, Any]) -> dict[str, Any]:
    """neuro_photo runs the version the user has when they ask (a later training does not change it)."""
    if not user.lora_version or not user.lora_trigger_word:
        raise InvalidRequest(
            [Problem("model", "no_trained_model", {"min_images": TRAINING_ARCHIVE.min_images})]
        )
    return {"lora_version": user.lora_version, "lora_trigger_word": user.lora_trigger_word}


# --- model_training --------------------------------------------------------------------------------


def destination_name(bot_name: str, telegram_id: int, trigger_word: str) -> str:
    """The Replicate model a user's trainings push versions to: one per bot, user and trigger word.
    Replicate takes lowercase letters, digits, '-', '_' and '.' in a model name."""
    raw = f"lora-{bot_name[:40]}-{telegram_id}-{trigger_word}".lower()
    return re.sub(r"[^a-z0-9_.-]", "-", raw)


async def model_training(ctx: PipelineContext) -> Delivered:
    replicate = ctx.services.replicate
    trigger_word = str(ctx.request["trigger_word"])
    # A Telegram file is uploaded to Replicate's files API: its URL carries the bot token.
    archive_url = await replicate_input_url(
        ctx, "zip", "photos.zip", "application/zip", TRAINING_ARCHIVE.max_bytes
    )
    owner: str = await ctx.steps.run("training:owner", replicate.account_username)
    name = destination_name(ctx.generation.bot_name, int(ctx.request["telegram_id"]), trigger_word)
    destination: str = await ctx.steps.run(
        "training:destination", lambda: replicate.ensure_model(owner, name)
    )
    # The trainer's owner publishes new versions; the one current when this training starts is used.
    trainer_version: str = await ctx.steps.run(
        "training:trainer_version", lambda: replicate.latest_version(ctx.model.ref)
    )
    training_input = ctx.model.build_input({**ctx.request, "zip": archive_url})

    async def create() -> str:
        return await replicate.create_training(
            ctx.model.ref, trainer_version, destination, training_input, webhook=ctx.webhook_url("training")
        )

    async def find_lost(since: float) -> str | None:
        return await replicate.find_training(
            trainer_version, training_input, since, lambda job_id: job_taken(ctx, "training", job_id)
        )

    # The paid call: its id is journaled as "training:id" (a create lost to a crash is found, not repeated).
    await create_once(ctx, "training", create, find_lost, deadline=ctx.services.settings.training_deadline)
    await _tell_user(ctx, "notify_training_started", text("train_started", ctx.language))
    try:
        state = await await_provider_job(
            ctx,
            "training",
            replicate.get_training,
            replicate.cancel_training,
            ctx.services.settings.training_deadline,
        )
    except ProviderFailed as error:  # it outlived the deadline and was cancelled
        raise TrainingFailed(str(error)) from None
    if state.status != "succeeded":
        raise TrainingFailed(f"training {state.id} {state.status}: {state.error}")
    version = _trained_version(state.output)

    async def store_on_user() -> str | None:
        # The model is what the user pays for: storing it is its delivery. A cancellation that came
        # first (the provider's cancel too late) keeps it from being stored; one that comes after is
        # refused (generation/lifecycle.py), so the user never has both the model and the refund.
        async with ctx.services.db.transaction() as session:
            if not await lifecycle.begin_delivery(session, ctx.steps):
                return None  # cancelled and refunded, though the provider's cancel came too late
            user = await session.get(User, ctx.generation.user_id)
            assert user is not None
            user.lora_version = version
            user.lora_trigger_word = trigger_word
        return version

    # Journaled: a rerun never puts back an older version over one trained since.
    if await ctx.steps.run("lora:stored", store_on_user) is None:
        return Delivered(units=0)
    photo = ctx.services.catalog.default_for(Kind.neuro_photo)
    ready = text("train_ready", ctx.language, trigger_word=trigger_word, price=photo.price if photo else 0)
    await _tell_user(ctx, "notify_model_ready", ready)
    return Delivered(units=1, result={"version": version, "trigger_word": trigger_word})


def _trained_version(output: Any) -> str:
    version = output.get("version") if isinstance(output, dict) else None
    if not isinstance(version, str) or not TRAINED_VERSION.match(version):
        raise TrainingFailed(f"the training succeeded without a version: {str(output)[:200]}")
    return version


async def _tell_user(ctx: PipelineContext, step: str, message: str) -> None:
    """A message about the training, once. Best effort: the model is trained and paid for whether or
    not this reaches the chat (the final message with the balance follows anyway)."""
    if not ctx.can_deliver:
        return
    delivery = ctx.services.delivery
    bot_name, chat_id = ctx.generation.bot_name, ctx.chat_id
    try:
        await ctx.steps.run(step, lambda: delivery.send_text(bot_name, chat_id, message))
    except StepError as error:
        logger.bind(generation=ctx.generation.id).warning("could not message the user: {}", error)


# --- neuro_photo -----------------------------------------------------------------------------------


def prompt_with_trigger_word(prompt: str, trigger_word: str) -> str:
    """The LoRA draws the user only when its trigger word is in the prompt: add it unless it is."""
    if re.search(rf"(?<![A-Za-z0-9_]){re.escape(trigger_word)}(?![A-Za-z0-9_])", prompt, re.IGNORECASE):
        return prompt
    return f"{trigger_word} {prompt}"


async def neuro_photo(ctx: PipelineContext) -> Delivered:
    version = ctx.request.get("lora_version")
    trigger_word = ctx.request.get("lora_trigger_word")
    if not version or not trigger_word:
        raise ProviderRejected("the request names no trained model")
    prompt = prompt_with_trigger_word(str(ctx.request["prompt"]), str(trigger_word))
    model_input = ctx.model.build_input({**ctx.request, "prompt": prompt})
    state = await run_replicate_prediction(ctx, model_input, version=str(version))
    return await deliver_images(ctx, output_urls(state.output))


async def cancel_training(services: Services, journal: dict[str, Any]) -> None:
    if "training:id" in journal and "training:result" not in journal:
        await services.replicate.cancel_training(str(journal["training:id"]))


SPECS = [
    KindSpec(Kind.model_training, model_training, checker=check_training_request, cancel=cancel_training),
    KindSpec(Kind.neuro_photo, neuro_photo, preparer=resolve_trained_model, cancel=cancel_prediction),
]
