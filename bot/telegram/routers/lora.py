"""/train <trigger_word> (model_training, from a ZIP of photos) and /photo [n] <prompt> (neuro_photo).

The archive comes as a document: with the caption `/train <trigger_word>`, or after `/train
<trigger_word>` (the word waits in the chat's FSM state for the next document). It is checked (by the
intake) before anything is charged; a bad one is answered and the word keeps waiting for a better archive.
"""

from __future__ import annotations

from aiogram import F, Router
from aiogram.filters import Command, CommandObject, StateFilter
from aiogram.fsm.context import FSMContext
from aiogram.fsm.state import State, StatesGroup
from aiogram.types import Message

from bot.telegram.arguments import UnreadableCount, counted_prompt
from bot.telegram.filters import in_loop
from bot.telegram.keyboards import answer_insufficient_balance
from bot.telegram.submit import Requester
from generation.archives import MEGABYTE, TRAINING_ARCHIVE
from generation.catalog import Kind
from generation.intake import Refused, Stage
from generation.kinds.lora import trigger_word_problem
from generation.requests import MAX_IMAGES, Problem
from generation.services import Services
from generation.store import User
from generation.texts import text


class Training(StatesGroup):
    waiting_archive = State()


def _archive_terms() -> dict[str, int]:
    return {"min_images": TRAINING_ARCHIVE.min_images, "limit_mb": TRAINING_ARCHIVE.max_bytes // MEGABYTE}


def _usage(services: Services, lang: str) -> str:
    model = services.catalog.default_for(Kind.model_training)
    return text("train_usage", lang, price=model.price if model else 0, **_archive_terms())


async def _answer_problems(message: Message, problems: list[Problem], lang: str) -> None:
    await message.answer("\n".join(problem.message(lang) for problem in problems))


async def _cannot_afford(message: Message, user: User, lang: str, services: Services) -> bool:
    """Said before the archive is asked for or fetched; the charge itself stays the conditional one."""
    model = services.catalog.default_for(Kind.model_training)
    if model is None or user.balance >= model.price:
        return False
    await answer_insufficient_balance(message, lang, needed=model.price, balance=user.balance)
    return True


async def train_command(
    message: Message, command: CommandObject, state: FSMContext, user: User, lang: str, services: Services
) -> None:
    """/train <trigger_word> without an archive: remember the word and ask for the archive."""
    word = (command.args or "").strip()
    if not word:
        await state.clear()
        await message.answer(_usage(services, lang))
        return
    if (problem := trigger_word_problem(word)) is not None:
        await _answer_problems(message, [problem], lang)
        return
    if await _cannot_afford(message, user, lang, services):
        return
    await state.set_state(Training.waiting_archive)
    await state.update_data(trigger_word=word)
    await message.answer(text("train_send_archive", lang, trigger_word=word, **_archive_terms()))


async def train_with_archive(
    message: Message,
    command: CommandObject,
    state: FSMContext,
    lang: str,
    services: Services,
    requester: Requester,
) -> None:
    """A document captioned /train <trigger_word> (or /train alone, after /train <trigger_word>)."""
    word = (command.args or "").strip() or (await state.get_data()).get("trigger_word")
    if not word:
        await message.answer(_usage(services, lang))
        return
    await _train(message, str(word), state, requester)


async def archive_after_train(
    message: Message,
    state: FSMContext,
    lang: str,
    services: Services,
    requester: Requester,
) -> None:
    """The next document after /train <trigger_word>."""
    word = (await state.get_data()).get("trigger_word")
    if not word:
        await state.clear()
        await message.answer(_usage(services, lang))
        return
    await _train(message, str(word), state, requester)


async def _train(message: Message, word: str, state: FSMContext, requester: Requester) -> None:
    user, lang, services = requester.user, requester.lang, requester.services
    if (problem := trigger_word_problem(word)) is not None:
        await state.clear()
        await _answer_problems(message, [problem], lang)
        return
    if await _cannot_afford(message, user, lang, services):
        await state.clear()
        return
    document = message.document
    assert document is not None
    limit = TRAINING_ARCHIVE.max_bytes
    if document.file_size is not None and document.file_size > limit:
        # Telegram would refuse the bot this download anyway; say why without trying.
        await _answer_problems(
            message, [Problem("zip_file_id", "zip_too_large", {"limit_mb": limit // MEGABYTE})], lang
        )
        return
    fields = {"zip_file_id": document.file_id, "trigger_word": word}
    outcome = await requester.submit(message, kind=Kind.model_training, fields=fields)
    if not (isinstance(outcome, Refused) and outcome.stage is Stage.inputs):
        # An archive refused leaves the word waiting for a better one; anything else ends the wait.
        await state.clear()


async def photo(
    message: Message,
    command: CommandObject,
    lang: str,
    requester: Requester,
) -> None:
    """/photo [n] <prompt>: the user's own trained model (the preparer finds it, or says how to train)."""
    asked = counted_prompt(command.args, maximum=MAX_IMAGES)
    if isinstance(asked, UnreadableCount):
        await message.answer(text("count_unreadable", lang, max=MAX_IMAGES, command="/photo"))
        return
    if not asked.prompt:
        await message.answer(text("photo_usage", lang))
        return
    await requester.submit(
        message, kind=Kind.neuro_photo, fields={"prompt": asked.prompt, "num_images": asked.count}
    )


def build_router() -> Router:
    """A new router each time: aiogram attaches a router to one dispatcher only."""
    router = Router(name="lora")
    router.message.register(train_with_archive, Command("train"), in_loop(F.document))
    router.message.register(train_command, Command("train"))
    router.message.register(archive_after_train, StateFilter(Training.waiting_archive), in_loop(F.document))
    router.message.register(photo, Command("photo"))
    return router
