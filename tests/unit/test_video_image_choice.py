"""Which attachment /animate animates (bot/telegram/routers/video.py image_to_animate), on Telegram's
own types."""

from __future__ import annotations

from typing import Any

from aiogram.types import Message

from bot.telegram.routers.video import Refusal, image_to_animate


def message(**fields: Any) -> Message:
    return Message.model_validate(
        {"message_id": 1, "date": 0, "chat": {"id": 5, "type": "private"}, "caption": "/animate x", **fields}
    )


def size(file_id: str, side: int, file_size: int | None = None) -> dict[str, Any]:
    return {
        "file_id": file_id,
        "file_unique_id": file_id,
        "width": side,
        "height": side,
        "file_size": file_size,
    }


def test_the_largest_size_of_a_photo_whatever_the_order() -> None:
    sizes = [size("medium", 320), size("large", 1280), size("small", 90)]
    assert image_to_animate(message(photo=sizes)) == "large"


def test_an_image_file_is_used_and_other_files_are_refused_with_their_type() -> None:
    png = {"file_id": "doc", "file_unique_id": "doc", "mime_type": "image/png", "file_size": 1000}
    assert image_to_animate(message(document=png)) == "doc"
    pdf = {**png, "mime_type": "application/pdf"}
    assert image_to_animate(message(document=pdf)) == Refusal(
        "animate_not_an_image", {"mime_type": "application/pdf"}
    )
    unnamed = {"file_id": "doc", "file_unique_id": "doc"}
    assert image_to_animate(message(document=unnamed)) == Refusal("animate_not_an_image", {"mime_type": "?"})
    video = {
        "file_id": "v",
        "file_unique_id": "v",
        "width": 1,
        "height": 1,
        "duration": 1,
        "mime_type": "video/mp4",
    }
    assert image_to_animate(message(video=video)) == Refusal(
        "animate_not_an_image", {"mime_type": "video/mp4"}
    )


def test_an_image_file_over_what_bots_may_download_is_refused_up_front() -> None:
    huge = {
        "file_id": "doc",
        "file_unique_id": "doc",
        "mime_type": "image/jpeg",
        "file_size": 21 * 1024 * 1024,
    }
    refusal = image_to_animate(message(document=huge))
    assert refusal == Refusal("animate_image_too_large", {"size_mb": 21.0, "limit_mb": 20})


def test_the_message_replied_to_is_used_when_the_command_has_no_attachment() -> None:
    photo = message(photo=[size("replied", 800)], caption=None)
    assert image_to_animate(message(reply_to_message=photo.model_dump())) == "replied"
    own = [size("own", 800)]
    assert image_to_animate(message(photo=own, reply_to_message=photo.model_dump())) == "own"
    words = message(text="just words", caption=None)
    assert image_to_animate(message(reply_to_message=words.model_dump())) is None
    assert image_to_animate(message()) is None
