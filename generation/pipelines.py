"""Each kind's steps, shared by both plans: create the prediction (its id journaled before it is
awaited), await it, fetch the output, deliver it to the chat. Settling (charge what was delivered,
refund the rest) is done by generation/execution.py around every pipeline alike.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from generation.catalog import CatalogModel, Kind
from generation.delivery import Media
from generation.services import Services
from generation.steps import StepJournal
from generation.store import Generation
from providers.errors import ProviderFailed, ProviderRejected
from providers.replicate import PredictionState, output_urls


@dataclass
class PipelineContext:
    services: Services
    generation: Generation
    model: CatalogModel
    steps: StepJournal
    language: str
    wait_budget: float

    @property
    def can_deliver(self) -> bool:
        return self.generation.chat_id is not None and self.services.delivery.can_deliver(
            self.generation.bot_name
        )


@dataclass
class Delivered:
    """What reached the user: `units` is what they pay for (images delivered, or 1)."""

    units: int
    result: dict[str, Any] = field(default_factory=dict)


Pipeline = Callable[[PipelineContext], Awaitable[Delivered]]


async def run_replicate_prediction(ctx: PipelineContext, input: dict[str, Any]) -> PredictionState:
    """Create the prediction once (id journaled), then wait for it; a rerun waits on the same id."""
    replicate = ctx.services.replicate
    prediction_id: str = await ctx.steps.run(
        "create_prediction", lambda: replicate.create_prediction(ctx.model.ref, input), shielded=True
    )
    state_json: dict[str, Any] = await ctx.steps.run(
        "prediction_result",
        lambda: _wait_json(ctx, prediction_id),
    )
    state = PredictionState.from_json(state_json)
    if state.status == "failed":
        raise _failure_of(state)
    if state.status == "canceled":
        raise ProviderFailed(f"prediction {state.id} was canceled at the provider")
    return state


async def _wait_json(ctx: PipelineContext, prediction_id: str) -> dict[str, Any]:
    state = await ctx.services.replicate.wait(prediction_id, timeout=ctx.wait_budget)
    return state.as_json()


def _failure_of(state: PredictionState) -> Exception:
    error = (state.error or "").lower()
    # Safety filters answer a failed prediction whose error names NSFW content: the input is at fault.
    if "nsfw" in error or "safety" in error or "sensitive" in error:
        return ProviderRejected(f"prediction {state.id} rejected: {state.error}")
    return ProviderFailed(f"prediction {state.id} failed: {state.error}")


async def deliver_images(ctx: PipelineContext, urls: list[str]) -> Delivered:
    """Fetch the images and send them as one album (or one photo); the user pays for what arrived."""
    if not urls:
        raise ProviderFailed("the prediction succeeded with no output")
    if not ctx.can_deliver:
        return Delivered(units=len(urls), result={"urls": urls})
    generation = ctx.generation
    assert generation.chat_id is not None

    async def send() -> list[int]:
        images = await asyncio.gather(*(ctx.services.replicate.download(url) for url in urls))
        media = [
            Media(content=image, filename=f"{generation.id}-{index}.png")
            for index, image in enumerate(images)
        ]
        return await ctx.services.delivery.send_images(generation.bot_name, generation.chat_id or 0, media)

    message_ids: list[int] = await ctx.steps.run("deliver", send)
    return Delivered(
        units=min(len(message_ids), len(urls)), result={"urls": urls, "message_ids": message_ids}
    )


async def text_to_image(ctx: PipelineContext) -> Delivered:
    input = ctx.model.build_input(ctx.generation.request)
    state = await run_replicate_prediction(ctx, input)
    return await deliver_images(ctx, output_urls(state.output))


PIPELINES: dict[Kind, Pipeline] = {
    Kind.text_to_image: text_to_image,
}
