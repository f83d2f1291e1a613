"""/video <prompt> (text_to_video) and /animate <prompt> (image_to_video, as the caption of a photo or
as a reply to one), each with the model the user chose for it in /model."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aiogram import Router
from aiogram.filters import Command, CommandObject
from aiogram.types import Message

from bot.telegram.routers.image import chosen_model
from bot.telegram.submit import Requester
from generation.catalog import Kind
from generation.delivery import DOWNLOAD_LIMIT
from generation.texts import text

MEGABYTE = 1024 * 1024


def _chosen(requester: Requester, kind: Kind) -> str | None:
    """The model the user chose for the kind with /model (None: the catalogue's default)."""
    model = chosen_model(requester.user, kind, requester.services.catalog)
    return model.id if model is not None else None


async def video(
    message: Message,
    command: CommandObject,
    lang: str,
    requester: Requester,
) -> None:
    prompt = (command.args or "").strip()
    if not prompt:
        await message.answer(text("video_usage", lang))
        return
    await requester.submit(
        message,
        kind=Kind.text_to_video,
        fields={"prompt": prompt, "model": _chosen(requester, Kind.text_to_video)},
    )


@dataclass(frozen=True)
class Refusal:
    """Why the attached file cannot be animated: a text key and its fields."""

    key: str
    fields: dict[str, Any] = field(default_factory=dict)


def image_to_animate(message: Message) -> str | Refusal | None:
    """The file_id of the image to animate: attached to the command's message, else to the message it
    replies to. A refusal when that attachment is not a usable image; None when there is none."""
    for candidate in (message, message.reply_to_message):
        if candidate is None:
            continue
        found = _attached_image(candidate)
        if found is not None:
            return found
    return None


def _attached_image(message: Message) -> str | Refusal | None:
    if message.photo:
        # Telegram sends several sizes of one photo; the largest gives the model the most to work with.
        largest = max(message.photo, key=lambda size: (size.width * size.height, size.file_size or 0))
        return largest.file_id
    document = message.document
    if document is not None:
        mime_type = document.mime_type or ""
        if not mime_type.startswith("image/"):
            return Refusal("animate_not_an_image", {"mime_type": mime_type or "?"})
        # Bots may download files up to 20 MB: refuse a larger one now rather than fail after the charge.
        if document.file_size is not None and document.file_size > DOWNLOAD_LIMIT:
            return Refusal(
                "animate_image_too_large",
                {"size_mb": round(document.file_size / MEGABYTE, 1), "limit_mb": DOWNLOAD_LIMIT // MEGABYTE},
            )
        return document.file_id
    for media in (message.video, message.animation, message.audio, message.voice):
        if media is not None:
            return Refusal("animate_not_an_image", {"mime_type": media.mime_type or "?"})
    return None


async def animate(
    message: Message,
    command: CommandObject,
    lang: str,
    requester: Requester,
) -> None:
    prompt = (command.args or "").strip()
    image = image_to_animate(message)
    if isinstance(image, Refusal):
        await message.answer(text(image.key, lang, **image.fields))
        return
    if image is None or not prompt:
        await message.answer(text("animate_no_photo" if prompt else "animate_usage", lang))
        return
    await requester.submit(
        message,
        kind=Kind.image_to_video,
        fields={"prompt": prompt, "image_file_id": image, "model": _chosen(requester, Kind.image_to_video)},
    )


def build_router() -> Router:
    """A new router each time: aiogram attaches a router to one dispatcher only."""
    router = Router(name="video")
    router.message.register(video, Command("video"))
    # Command reads a photo's caption too, so "/animate <prompt>" under a photo lands here.
    router.message.register(animate, Command("animate"))
    return router
