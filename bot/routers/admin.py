"""Admin commands: /plan (show or switch the plan) and /grant. The router only sees admins' messages;
anyone else's /plan falls through to the unknown-command answer, with no admin output."""

from __future__ import annotations

from aiogram import Bot, Router
from aiogram.exceptions import TelegramAPIError
from aiogram.filters import Command, CommandObject
from aiogram.types import Message
from loguru import logger

from generation import ledger
from generation.dispatcher import Dispatcher
from generation.plan import PlanMode
from generation.services import Services
from generation.texts import text
from generation.users import find_user


def build_admin_router(admin_ids: list[int]) -> Router:
    router = Router(name="admin")
    admins = set(admin_ids)
    router.message.filter(lambda message: message.from_user is not None and message.from_user.id in admins)

    @router.message(Command("plan"))
    async def plan(message: Message, command: CommandObject, lang: str, generations: Dispatcher) -> None:
        argument = (command.args or "").strip().lower()
        if argument:
            try:
                mode = PlanMode(argument)
            except ValueError:
                await message.answer("/plan a | /plan b | /plan auto")
                return
            await generations.set_mode(mode)
            current = await generations.current_plan()
            await message.answer(text("plan_switched", lang, mode=mode.value, plan=current.value))
            return
        await message.answer(await plan_status(generations, lang))

    @router.message(Command("grant"))
    async def grant(
        message: Message, command: CommandObject, bot: Bot, bot_name: str, lang: str, services: Services
    ) -> None:
        words = (command.args or "").split()
        if len(words) != 2 or not words[0].isdigit() or not words[1].isdigit() or int(words[1]) <= 0:
            await message.answer(text("grant_usage", lang))
            return
        telegram_id, stars = int(words[0]), int(words[1])
        async with services.db.transaction() as session:
            target = await find_user(session, bot_name, telegram_id)
            if target is None:
                posting = None
            else:
                # Keyed by the admin's message: a repeated update credits once.
                key = f"grant:{bot_name}:{message.chat.id}:{message.message_id}"
                posting = await ledger.credit(
                    session, target.id, stars, key, note=f"by admin {message.chat.id}"
                )
        if target is None or posting is None:
            await message.answer(text("grant_unknown_user", lang, telegram_id=telegram_id))
            return
        if not posting.applied:
            return
        await message.answer(
            text("grant_done", lang, stars=stars, telegram_id=telegram_id, balance=posting.balance)
        )
        try:
            await bot.send_message(
                telegram_id, text("granted_notice", target.language, stars=stars, balance=posting.balance)
            )
        except TelegramAPIError as error:  # the user may have blocked the bot; the credit stands
            logger.info("could not tell user {} about a grant: {}", telegram_id, error.message)

    return router


async def plan_status(generations: Dispatcher, lang: str) -> str:
    mode, source = await generations.mode()
    queue_answers = await generations.queue.ping() if generations.queue is not None else None
    current = await generations.current_plan(queue_answers)
    queue = {None: "not connected", True: "healthy", False: "NOT answering"}[queue_answers]
    counts = await generations.counts_per_plan()
    return text(
        "plan_status",
        lang,
        plan=current.value,
        mode=mode.value,
        source=source,
        queue=queue,
        breaker=generations.breaker.describe(),
        count_a=counts.get("A", 0),
        count_b=counts.get("B", 0),
    )
