"""Users of a bot: registered at first contact, with a language and (once) a welcome bonus."""

from __future__ import annotations

from sqlalchemy import bindparam, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from generation import ledger
from generation.direct_statements import Prepared
from generation.store import Database, User, detached


async def ensure_user(
    session: AsyncSession,
    bot_name: str,
    telegram_id: int,
    *,
    username: str | None,
    language: str,
    new_user_bonus: int = 0,
) -> tuple[User, bool]:
    """The user of this bot, created on first contact; answers (user, created). Concurrent first
    contacts create one user: the loser of the unique-key race reads the winner's row."""
    user = await find_user(session, bot_name, telegram_id)
    if user is not None:
        if username and user.username != username:
            user.username = username
        return user, False
    try:
        async with session.begin_nested():
            user = User(
                bot_name=bot_name, telegram_id=telegram_id, username=username, language=language, balance=0
            )
            session.add(user)
            await session.flush()
    except IntegrityError:
        existing = await find_user(session, bot_name, telegram_id)
        assert existing is not None
        return existing, False
    if new_user_bonus > 0:
        await ledger.credit(
            session, user.id, new_user_bonus, f"grant:welcome:{user.id}", note="welcome bonus"
        )
        await session.refresh(user)
    return user, True


async def find_user(session: AsyncSession, bot_name: str, telegram_id: int) -> User | None:
    return await session.scalar(
        select(User).where(User.bot_name == bot_name, User.telegram_id == telegram_id)
    )


# A user by bot and Telegram id, built once with bound parameters (as store.py's generation by id).
_USER_BY_CHAT = Prepared(
    select(*User.__table__.columns).where(
        User.bot_name == bindparam("bot_name"), User.telegram_id == bindparam("telegram_id")
    )
)


async def read_user(db: Database, bot_name: str, telegram_id: int) -> User | None:
    """The user as it stands, outside any transaction (every update begins with this read): read as
    plain columns, the object detached from any session. To change a user, `ensure_user` in a
    transaction."""
    async with db.direct_reads(urgent=True) as direct:
        found = await direct.execute(_USER_BY_CHAT, {"bot_name": bot_name, "telegram_id": telegram_id})
    row = found.first()
    return None if row is None else detached(User, row)
