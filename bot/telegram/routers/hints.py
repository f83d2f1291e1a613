"""The last router: a message that is no command and that nothing waits for (plain text, a bare photo,
a voice message, a file) gets a short hint of what to do with it, rather than silence.

Included last, after every router that takes such messages in a conversation state (/voice waiting
for a recording, /train waiting for an archive): those see them first. Commands nobody knows stay the
unknown-command router's; service messages (payments among them) are never answered here.
"""

from __future__ import annotations

from collections import OrderedDict

from aiogram import F, Router
from aiogram.filters import StateFilter
from aiogram.fsm.context import FSMContext
from aiogram.types import Message

from bot.telegram.filters import in_loop
from bot.telegram.routers.lora import Training
from generation.archives import MEGABYTE, TRAINING_ARCHIVE
from generation.catalog import Kind
from generation.services import Services
from generation.texts import text

# A text this short is offered back as a ready command ("/image <your text>").
EXAMPLE_LIMIT = 200
# An album arrives as several messages: one hint for all of them.
_albums_hinted: OrderedDict[tuple[int, str], None] = OrderedDict()
ALBUMS_REMEMBERED = 1000


def _price(services: Services, kind: Kind) -> int:
    model = services.catalog.default_for(kind)
    return model.price if model is not None else 0


def _first_of_album(message: Message) -> bool:
    if message.media_group_id is None:
        return True
    key = (message.chat.id, message.media_group_id)
    if key in _albums_hinted:
        return False
    _albums_hinted[key] = None
    while len(_albums_hinted) > ALBUMS_REMEMBERED:
        _albums_hinted.popitem(last=False)
    return True


def hint_for(message: Message, lang: str, services: Services) -> str:
    """What to do with this message, in a line or two."""
    document = message.document
    mime_type = (document.mime_type or "") if document is not None else ""
    file_name = (document.file_name or "").lower() if document is not None else ""
    if message.text is not None:
        words = " ".join(message.text.split())
        if words and len(words) <= EXAMPLE_LIMIT:
            return text("journey_hint_text", lang, example=words)
        return text("journey_hint_text_long", lang)
    if message.photo or mime_type.startswith("image/"):
        return text("journey_hint_photo", lang, price=_price(services, Kind.image_to_video))
    if message.voice is not None or message.audio is not None or mime_type.startswith("audio/"):
        return text(
            "journey_hint_voice",
            lang,
            price=_price(services, Kind.voice_avatar),
            speech_price=_price(services, Kind.text_to_speech),
        )
    if document is not None and (file_name.endswith(".zip") or "zip" in mime_type):
        return text("journey_hint_archive", lang, price=_price(services, Kind.model_training))
    return text("journey_hint_other", lang)


async def hint(message: Message, lang: str, services: Services) -> None:
    if _first_of_album(message):
        await message.answer(hint_for(message, lang, services))


async def waiting_for_archive(message: Message, state: FSMContext, lang: str) -> None:
    """After /train <word>, anything but the archive: say what the wait is for (it goes on)."""
    word = (await state.get_data()).get("trigger_word") or "-"
    await message.answer(
        text(
            "journey_hint_waiting_archive",
            lang,
            trigger_word=word,
            min_images=TRAINING_ARCHIVE.min_images,
            limit_mb=TRAINING_ARCHIVE.max_bytes // MEGABYTE,
        )
    )


# What a user sends, as opposed to service messages (a payment, a member joining, a pinned message).
USER_CONTENT = (
    F.text | F.photo | F.voice | F.audio | F.document | F.video | F.video_note | F.animation | F.sticker
)


def build_router() -> Router:
    """A new router each time: aiogram attaches a router to one dispatcher only."""
    router = Router(name="hints")
    # In a group the bot sees only what is meant for it; a hint there would be noise.
    router.message.filter(in_loop(F.chat.type == "private"))
    not_a_command = ~F.text.startswith("/") & ~F.caption.startswith("/")
    router.message.register(
        waiting_for_archive,
        StateFilter(Training.waiting_archive),
        in_loop(USER_CONTENT),
        in_loop(not_a_command),
    )
    router.message.register(hint, StateFilter(None), in_loop(USER_CONTENT), in_loop(not_a_command))
    return router
