"""text_to_speech and voice_avatar, at ElevenLabs.

text_to_speech: the voice is chosen when the request is recorded (the preparer), so the stored request
says which voice spoke: the request's own voice_id (HTTP), else the user's cloned voice, else the
catalogue's default voice for the request's language. Ogg/Opus audio is sent as a voice message (what
Telegram plays as one); any other format as an audio file.

voice_avatar: the user's recording is cloned (the new voice id journaled, the call shielded: it is paid
and takes one of the account's few voice slots), the voice is stored on the user, and only then is the
user's previous voice deleted at ElevenLabs, as a step of its own.
"""

from __future__ import annotations

import contextlib
from typing import Any

from loguru import logger
from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from generation import lifecycle
from generation.catalog import Kind, load_catalog
from generation.delivery import InputTooLarge, Media
from generation.kinds.spec import KindSpec
from generation.pipelines import (
    Delivered,
    PipelineContext,
    create_once,
    handing_over,
    input_bytes,
)
from generation.requests import InvalidRequest, Problem
from generation.services import Services
from generation.store import Step, User
from generation.texts import text
from providers.elevenlabs import VoiceNotFound
from providers.errors import ProviderFailed, ProviderRejected, StepError
from providers.guarded_fetch import FetchRefused

# What a recording to clone may be. ElevenLabs needs some seconds of real speech; a bigger file than
# this is more than instant cloning uses, and slow to fetch through the bot.
MAX_RECORDING_BYTES = 10 * 1024 * 1024
MIN_RECORDING_SECONDS = 5

DEFAULT_OUTPUT_FORMAT = "opus_48000_64"
STORED_STEP = "voice:stored"


class ClonedVoiceGone(VoiceNotFound):
    """The user's cloned voice was deleted at ElevenLabs (by an operator freeing slots)."""

    reason = "failed_cloned_voice_gone"


class RecordingTooLarge(InputTooLarge):
    reason = "failed_recording_too_large"


# --- text_to_speech -------------------------------------------------------------------------------


async def choose_voice(session: AsyncSession, user: User, request: dict[str, Any]) -> dict[str, Any]:
    """The voice that will speak, recorded with the request (and where it came from)."""
    if request.get("voice_id"):
        return {"voice_source": "request"}
    if user.voice_id:
        return {"voice_id": user.voice_id, "voice_source": "cloned"}
    model = load_catalog().get(str(request.get("model")))
    voices: dict[str, str] = model.extra.get("voices", {}) if model is not None else {}
    language = "ru" if request.get("is_ru") else "en"
    voice_id = voices.get(language) or voices.get("en")
    if not voice_id:  # a catalogue entry without default voices: the request must name one
        raise InvalidRequest([Problem("voice_id", "missing")])
    return {"voice_id": voice_id, "voice_source": "default"}


async def text_to_speech(ctx: PipelineContext) -> Delivered:
    voice_id = str(ctx.request["voice_id"])
    output_format = str(ctx.model.extra.get("output_format", DEFAULT_OUTPUT_FORMAT))
    codec = output_format.split("_", 1)[0]

    async def speak() -> bytes:
        try:
            audio = await ctx.services.elevenlabs.speak(
                str(ctx.request["text"]), voice_id, ctx.model.ref, output_format
            )
        except VoiceNotFound as error:
            if ctx.request.get("voice_source") != "cloned":
                raise
            await forget_cloned_voice(ctx, voice_id)
            raise ClonedVoiceGone(str(error)) from None
        if not audio:
            raise ProviderFailed("elevenlabs answered no audio")
        return audio

    if not ctx.can_deliver:
        # No chat to send it to (an HTTP request naming no bot): the speech is made, as paid for, but
        # audio is never kept in the database.
        audio = await speak()
        return Delivered(units=1, result={"voice_id": voice_id, "format": output_format, "bytes": len(audio)})

    generation = ctx.generation
    delivery = ctx.services.delivery

    async def send() -> list[int]:
        # Spoken inside the delivery step: audio bytes cannot be journaled, so a retry after a failed
        # send speaks again (a few characters of quota) rather than delivering twice.
        # Opus comes in an Ogg container: the one format Telegram shows as a voice message.
        extension = "ogg" if codec == "opus" else codec
        audio = Media(content=await speak(), filename=f"{generation.id}.{extension}")
        async with handing_over(ctx):
            if codec == "opus":
                return [await delivery.send_voice(generation.bot_name, ctx.chat_id, audio)]
            return [await delivery.send_audio(generation.bot_name, ctx.chat_id, audio)]

    if not await ctx.steps.is_done("deliver"):
        with contextlib.suppress(StepError):  # a courtesy; the delivery itself reports real trouble
            await delivery.chat_action(generation.bot_name, ctx.chat_id, "record_voice")
    message_ids: list[int] = await ctx.steps.run("deliver", send)
    return Delivered(units=1, result={"voice_id": voice_id, "message_ids": message_ids})


async def forget_cloned_voice(ctx: PipelineContext, voice_id: str) -> None:
    """The user's voice is gone at ElevenLabs: their next /speech takes the default voice again.
    Only if it is still theirs (they may have cloned a new one meanwhile)."""
    async with ctx.services.db.transaction() as session:
        await session.execute(
            update(User)
            .where(User.id == ctx.generation.user_id, User.voice_id == voice_id)
            .values(voice_id=None)
        )
    logger.bind(generation=ctx.generation.id).warning("cloned voice {} is gone at ElevenLabs", voice_id)


# --- voice_avatar ---------------------------------------------------------------------------------


async def voice_avatar(ctx: PipelineContext) -> Delivered:
    voice_id = await clone_recording(ctx)
    old_voice_id = await store_voice(ctx, voice_id)
    if old_voice_id:
        await ctx.steps.run("voice:old_deleted", lambda: delete_old_voice(ctx, old_voice_id))
    if not ctx.can_deliver:
        return Delivered(units=1, result={"voice_id": voice_id})
    generation = ctx.generation
    ready = text("voice_ready", ctx.language)

    async def tell() -> list[int]:
        async with handing_over(ctx):
            return [await ctx.services.delivery.send_text(generation.bot_name, ctx.chat_id, ready)]

    message_ids: list[int] = await ctx.steps.run("deliver", tell)
    return Delivered(units=1, result={"voice_id": voice_id, "message_ids": message_ids})


async def check_recording_url(services: Services, bot_name: str, request: dict[str, Any]) -> None:
    """An HTTP client's audio_url whose host may not be reached (the server's own network) is refused
    before anything is charged, without connecting to it; the recording itself is fetched only by the
    pipeline (which checks the address again). The same code whatever the reason, as for zip_url."""
    url = request.get("audio_url")
    if not url:
        return
    try:
        await services.fetcher.check(str(url))
    except FetchRefused:
        raise InvalidRequest([Problem("audio_url", "audio_unreachable")]) from None


def voice_name(ctx: PipelineContext) -> str:
    """Unique per generation, so a clone whose answer was lost in a crash can be found by its name."""
    return f"aibot-{ctx.generation.id}"


async def clone_recording(ctx: PipelineContext) -> str:
    """Clone once: the new voice id is journaled as `clone:id` (see pipelines.create_once); a rerun
    after a crash mid-call looks for the voice by its name before paying for another."""
    elevenlabs = ctx.services.elevenlabs
    name = voice_name(ctx)

    async def create() -> str:
        try:
            audio = await input_bytes(ctx, "audio", MAX_RECORDING_BYTES)
        except InputTooLarge as error:
            raise RecordingTooLarge(str(error)) from None
        if not audio:
            raise ProviderRejected("the recording is empty")
        filename, content_type = recording_file(ctx.request.get("audio_mime_type"), audio)
        return await elevenlabs.clone_voice(name, audio, filename, content_type)

    async def find_lost(since: float) -> str | None:
        return await elevenlabs.find_voice(name)

    return await create_once(ctx, "clone", create, find_lost)


async def store_voice(ctx: PipelineContext, voice_id: str) -> str | None:
    """Make `voice_id` the user's voice; answers the voice it replaces (None if none).

    The swap and its journal entry commit together: journaled apart, a crash between them would make
    the rerun take the new voice for the old one, and delete it. The voice is what the user pays for:
    storing it is its delivery, so a cancellation that came first keeps it from being stored (its
    canceller deletes the clone), and one that comes after is refused (generation/lifecycle.py)."""
    journaled = await ctx.steps.refresh(STORED_STEP)
    if journaled is None:
        try:
            async with ctx.services.db.transaction() as session:
                if not await lifecycle.begin_delivery(session, ctx.steps):
                    raise lifecycle.NotRunning(f"{ctx.generation.id} ended before its voice was stored")
                user = await session.get(User, ctx.generation.user_id, with_for_update=True)
                assert user is not None
                previous = user.voice_id if user.voice_id != voice_id else None
                journaled = {"voice_id": voice_id, "replaced": previous}
                user.voice_id = voice_id
                session.add(Step(generation_id=ctx.generation.id, name=STORED_STEP, result=journaled))
        except IntegrityError:  # another runner (after a lease expired) stored it first
            journaled = await ctx.steps.refresh(STORED_STEP)
    replaced = journaled.get("replaced") if isinstance(journaled, dict) else None
    return str(replaced) if replaced else None


async def delete_old_voice(ctx: PipelineContext, voice_id: str) -> bool:
    """Free the slot of the user's previous voice (already gone is fine). Best effort: the user has
    their new voice, so a failure here is logged for the operator rather than failing (and refunding)
    a clone that worked."""
    try:
        await ctx.services.elevenlabs.delete_voice(voice_id)
    except StepError as error:
        logger.bind(generation=ctx.generation.id).warning(
            "could not delete the replaced voice {} at ElevenLabs: {}", voice_id, error
        )
        return False
    return True


# Telegram sends voice messages as Ogg/Opus; audio files say their type. HTTP clients' files are
# recognised by their first bytes.
_EXTENSIONS = {
    "audio/ogg": "ogg",
    "audio/opus": "ogg",
    "audio/mpeg": "mp3",
    "audio/mp3": "mp3",
    "audio/mp4": "m4a",
    "audio/x-m4a": "m4a",
    "audio/m4a": "m4a",
    "audio/aac": "aac",
    "audio/wav": "wav",
    "audio/x-wav": "wav",
    "audio/wave": "wav",
    "audio/flac": "flac",
    "audio/x-flac": "flac",
    "audio/webm": "webm",
}


def recording_file(mime_type: str | None, audio: bytes) -> tuple[str, str]:
    """A filename and content type for the recording sent to ElevenLabs."""
    content_type = (mime_type or "").split(";", 1)[0].strip().lower() or _sniff(audio)
    return f"recording.{_EXTENSIONS.get(content_type, 'bin')}", content_type


def _sniff(audio: bytes) -> str:
    if audio.startswith(b"OggS"):
        return "audio/ogg"
    if audio.startswith(b"ID3") or (len(audio) > 1 and audio[0] == 0xFF and audio[1] & 0xE0 == 0xE0):
        return "audio/mpeg"
    if audio.startswith(b"RIFF") and audio[8:12] == b"WAVE":
        return "audio/wav"
    if audio.startswith(b"fLaC"):
        return "audio/flac"
    if audio[4:8] == b"ftyp":
        return "audio/mp4"
    return "application/octet-stream"


async def forget_unkept_clone(services: Services, journal: dict[str, Any]) -> None:
    """A voice cloned for a generation that will not keep it frees its slot (voice slots are few)."""
    if "clone:id" in journal and STORED_STEP not in journal:
        await services.elevenlabs.delete_voice(str(journal["clone:id"]))


SPECS = [
    KindSpec(Kind.text_to_speech, text_to_speech, preparer=choose_voice),
    KindSpec(Kind.voice_avatar, voice_avatar, checker=check_recording_url, cancel=forget_unkept_clone),
]
