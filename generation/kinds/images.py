"""text_to_image: a Flux prediction on Replicate, delivered as an album (or one photo)."""

from __future__ import annotations

from generation.catalog import Kind
from generation.kinds.spec import KindSpec
from generation.pipelines import (
    Delivered,
    PipelineContext,
    cancel_prediction,
    deliver_images,
    run_replicate_prediction,
)
from providers.replicate import output_urls


async def text_to_image(ctx: PipelineContext) -> Delivered:
    state = await run_replicate_prediction(ctx, ctx.model.build_input(ctx.request))
    return await deliver_images(ctx, output_urls(state.output))


SPECS = [
    KindSpec(Kind.text_to_image, text_to_image, cancel=cancel_prediction),
]
