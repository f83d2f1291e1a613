"""/speech <text> (text_to_speech) and /voice (voice_avatar).

/voice takes the recording from the message itself (a voice message captioned /voice), from the message
it replies to, or else asks for one and takes the user's next voice message or audio file in that chat
(the wait is per user, chat and bot; any other command ends it). A recording is checked here, before
anything is charged: a voice message or an audio file, not too large, not too short.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiogram import BaseMiddleware, Router
from aiogram.filters import Command, CommandObject, StateFilter
from aiogram.fsm.context import FSMContext
from aiogram.fsm.state import State, StatesGroup
from aiogram.types import Message, TelegramObject

from bot.telegram.submit import Requester
from generation.catalog import Kind
from generation.kinds.speech import MAX_RECORDING_BYTES, MIN_RECORDING_SECONDS
from generation.services import Services
from generation.texts import text

MAX_RECORDING_MB = MAX_RECORDING_BYTES // (1024 * 1024)


class VoiceAvatar(StatesGroup):
    waiting_for_recording = State()


@dataclass(frozen=True)
class Recording:
    file_id: str
    mime_type: str | None
    size: int | None
    duration: int | None  # seconds; unknown for an audio file sent as a document


def recording_in(message: Message | None) -> Recording | None:
    """The voice message or audio file a message carries, if any."""
    if message is None:
        return None
    if message.voice is not None:
        voice = message.voice
        return Recording(voice.file_id, voice.mime_type or "audio/ogg", voice.file_size, voice.duration)
    if message.audio is not None:
        audio = message.audio
        return Recording(audio.file_id, audio.mime_type, audio.file_size, audio.duration)
    document = message.document
    if document is not None and (document.mime_type or "").startswith("audio/"):
        return Recording(document.file_id, document.mime_type, document.file_size, None)
    return None


def recording_problem(recording: Recording, lang: str) -> str | None:
    """What is wrong with a recording, in the user's language, or None."""
    if recording.size is not None and recording.size > MAX_RECORDING_BYTES:
        return text("voice_too_large", lang, max_mb=MAX_RECORDING_MB)
    if recording.duration is not None and recording.duration < MIN_RECORDING_SECONDS:
        return text("voice_too_short", lang, duration=recording.duration, min_seconds=MIN_RECORDING_SECONDS)
    return None


def _price(services: Services, kind: Kind) -> int:
    model = services.catalog.default_for(kind)
    return model.price if model is not None else 0


# --- /speech ---------------------------------------------------------------------------------------


async def speech(
    message: Message,
    command: CommandObject,
    lang: str,
    services: Services,
    requester: Requester,
) -> None:
    spoken = (command.args or "").strip()
    reply = message.reply_to_message
    if not spoken and reply is not None:  # /speech as a reply reads the message replied to
        spoken = (reply.text or reply.caption or "").strip()
    if not spoken:
        model = services.catalog.default_for(Kind.text_to_speech)
        await message.answer(
            text(
                "speech_usage",
                lang,
                limit=model.max_text if model else 0,
                price=_price(services, Kind.text_to_speech),
            )
        )
        return
    await requester.submit(message, kind=Kind.text_to_speech, fields={"text": spoken})


# --- /voice ----------------------------------------------------------------------------------------


async def voice(
    message: Message,
    state: FSMContext,
    lang: str,
    services: Services,
    requester: Requester,
) -> None:
    recording = recording_in(message) or recording_in(message.reply_to_message)
    if recording is not None:
        await state.clear()
        await _clone(message, recording, requester)
        return
    if message.reply_to_message is not None or message.text is None:
        # A reply to something else, or /voice as the caption of a photo or video.
        await message.answer(text("voice_not_a_recording", lang))
        return
    await state.set_state(VoiceAvatar.waiting_for_recording)
    await message.answer(
        text(
            "voice_ask",
            lang,
            min_seconds=MIN_RECORDING_SECONDS,
            max_mb=MAX_RECORDING_MB,
            price=_price(services, Kind.voice_avatar),
        )
    )


async def recording_sent(
    message: Message,
    state: FSMContext,
    lang: str,
    requester: Requester,
) -> None:
    """The message after /voice: the recording, or a reminder (the wait goes on)."""
    recording = recording_in(message)
    if recording is None:
        await message.answer(text("voice_not_a_recording", lang))
        return
    await state.clear()
    await _clone(message, recording, requester)


async def _clone(message: Message, recording: Recording, requester: Requester) -> None:
    problem = recording_problem(recording, requester.lang)
    if problem is not None:
        await message.answer(problem)
        return
    await requester.submit(
        message,
        kind=Kind.voice_avatar,
        fields={"audio_file_id": recording.file_id, "audio_mime_type": recording.mime_type},
    )


def _is_command(message: Message) -> bool:
    return (message.text or message.caption or "").startswith("/")


class EndRecordingWaitOnCommand(BaseMiddleware):
    """Any command ends the wait /voice started, so a voice message sent later for another purpose is
    not cloned (and charged). A dispatcher-level outer middleware: it must run before any router picks
    the command, whatever the order of the routers."""

    async def __call__(
        self,
        handler: Callable[[TelegramObject, dict[str, Any]], Awaitable[Any]],
        event: TelegramObject,
        data: dict[str, Any],
    ) -> Any:
        state = data.get("state")
        waiting = data.get("raw_state") == VoiceAvatar.waiting_for_recording.state
        if waiting and isinstance(state, FSMContext) and isinstance(event, Message) and _is_command(event):
            await state.clear()
            data["raw_state"] = None  # StateFilter reads the state the FSM middleware loaded before us
        return await handler(event, data)


def build_router() -> Router:
    """A new router each time: aiogram attaches a router to one dispatcher only."""
    router = Router(name="speech")
    router.message.register(speech, Command("speech"))
    router.message.register(voice, Command("voice"))
    router.message.register(recording_sent, StateFilter(VoiceAvatar.waiting_for_recording))
    return router
