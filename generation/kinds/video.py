"""text_to_video and image_to_video: one Replicate prediction whose output is a video, sent to the chat
(or as a link when it is over Telegram's upload limit).

image_to_video's photo reaches Replicate through its files API (replicate_input_url): a Telegram file
URL carries the bot token and never leaves the server; an HTTP client's image_url is passed as it is.
"""

from __future__ import annotations

import contextlib
from typing import Any

from generation.catalog import Kind
from generation.kinds.spec import KindSpec
from generation.pipelines import (
    Delivered,
    PipelineContext,
    cancel_prediction,
    deliver_video,
    replicate_input_url,
    run_replicate_prediction,
)
from providers.errors import StepError


async def text_to_video(ctx: PipelineContext) -> Delivered:
    state = await run_replicate_prediction(ctx, ctx.model.build_input(ctx.request))
    return await _send_video(ctx, state.output)


async def image_to_video(ctx: PipelineContext) -> Delivered:
    # Telegram photos are always JPEG; an image sent as a file is labelled the same way, which the
    # models do not mind (they decode the bytes, not the declared type).
    image_url = await replicate_input_url(ctx, "image", "photo.jpg", "image/jpeg")
    # Each model names its image input differently (start_image, first_frame_image): the catalogue's
    # "{image}" placeholder maps it.
    state = await run_replicate_prediction(ctx, ctx.model.build_input({**ctx.request, "image": image_url}))
    return await _send_video(ctx, state.output)


async def _send_video(ctx: PipelineContext, output: Any) -> Delivered:
    """The "sending a video" chat action covers the upload, which takes a while for a large file."""
    if ctx.can_deliver and not await ctx.steps.is_done("deliver"):
        with contextlib.suppress(StepError):  # a courtesy; the delivery itself reports real trouble
            await ctx.services.delivery.chat_action(ctx.generation.bot_name, ctx.chat_id, "upload_video")
    return await deliver_video(ctx, output)


SPECS = [
    KindSpec(Kind.text_to_video, text_to_video, cancel=cancel_prediction),
    KindSpec(Kind.image_to_video, image_to_video, cancel=cancel_prediction),
]
