"""aiogram's FSM storage in the database: a pending /voice or /train survives a restart, is seen by every
`aibot run` process, and needs no Redis, so it works on Plan B while Redis is down."""

from __future__ import annotations

from collections.abc import Mapping
from contextvars import ContextVar
from typing import Any

from aiogram.fsm.state import State
from aiogram.fsm.storage.base import BaseStorage, DefaultKeyBuilder, StorageKey
from sqlalchemy import and_, bindparam, literal, select
from sqlalchemy.exc import IntegrityError

from generation.direct_statements import Prepared
from generation.store import ConversationState, Database, User, detached

# The user an update comes from, read with the conversation's state (`DatabaseStorage.get_state`, which
# aiogram calls for every update before any of our middlewares): bot name, Telegram id, and the row
# or None when there is none. Set in the task that handles the update, taken once by UserMiddleware.
_USER_READ_WITH_STATE: ContextVar[tuple[str, int, User | None] | None] = ContextVar(
    "user_read_with_state", default=None
)

_STATE_COLUMNS = [
    select(column).where(ConversationState.key == bindparam("key")).scalar_subquery().label(column.key)
    for column in (ConversationState.state, ConversationState.data)
]
# The state, its data and the user's row in one read, whichever of them exist: one round trip
# instead of two for every update. Built once (SQLAlchemy's cache key of it too).
_STATE_AND_USER = Prepared(
    select(*_STATE_COLUMNS, *User.__table__.columns).select_from(
        select(literal(1).label("one"))
        .subquery("one")
        .outerjoin(
            User, and_(User.bot_name == bindparam("bot_name"), User.telegram_id == bindparam("telegram_id"))
        )
    )
)
_STATE = Prepared(select(*_STATE_COLUMNS))


def user_read_with_state(bot_name: str, telegram_id: int) -> tuple[bool, User | None]:
    """(True, the user or None when unknown) if this update's state read also read this user, once;
    (False, None) otherwise, and then the caller reads the user itself."""
    read = _USER_READ_WITH_STATE.get()
    if read is None or read[:2] != (bot_name, telegram_id):
        return False, None
    _USER_READ_WITH_STATE.set(None)
    return True, read[2]


class DatabaseStorage(BaseStorage):
    def __init__(self, db: Database, bot_names: Mapping[int, str] | None = None) -> None:
        """`bot_names`: bot id -> name, for the state read of an update to read its user too."""
        self.db = db
        self.bot_names = dict(bot_names or {})
        # bot, chat, user (and thread, business connection, destiny when set): one key per conversation
        self.keys = DefaultKeyBuilder(with_bot_id=True, with_destiny=True)

    async def set_state(self, key: StorageKey, state: str | State | None = None) -> None:
        name = state.state if isinstance(state, State) else state
        await self._write(key, state=name)

    async def get_state(self, key: StorageKey) -> str | None:
        bot_name = self.bot_names.get(key.bot_id)
        if bot_name is None:
            row = await self._read(key)
            return row[0] if row is not None else None
        values = {"key": self.keys.build(key), "bot_name": bot_name, "telegram_id": key.user_id}
        async with self.db.direct_reads(urgent=True) as direct:
            state, _, *user_columns = (await direct.execute(_STATE_AND_USER, values)).one()
        user = None
        if user_columns[0] is not None:  # the user's id: the row exists
            user = detached(User, user_columns)
        _USER_READ_WITH_STATE.set((bot_name, key.user_id, user))
        return state  # type: ignore[no-any-return]

    async def set_data(self, key: StorageKey, data: Mapping[str, Any]) -> None:
        await self._write(key, data=dict(data))

    async def get_data(self, key: StorageKey) -> dict[str, Any]:
        row = await self._read(key)
        return dict(row[1] or {}) if row is not None else {}

    async def close(self) -> None:
        return None  # the database belongs to the process's services, which close it

    async def _read(self, key: StorageKey) -> tuple[str | None, Any] | None:
        """The conversation's state and data (read at every update: as plain columns, not an object)."""
        async with self.db.direct_reads(urgent=True) as direct:
            state, data = (await direct.execute(_STATE, {"key": self.keys.build(key)})).one()
        return None if state is None and data is None else (state, data)

    async def _write(self, key: StorageKey, **values: Any) -> None:
        """Change one field of the conversation's row, creating it on first use; a conversation with
        no state and no data leaves no row behind."""
        storage_key = self.keys.build(key)
        for _ in range(2):  # again when another process created the row between our read and insert
            try:
                async with self.db.transaction() as session:
                    row = await session.get(ConversationState, storage_key, with_for_update=True)
                    fields = {"state": None, "data": None} if row is None else {}
                    fields.update(values)
                    if row is None:
                        row = ConversationState(key=storage_key, **fields)
                        if row.state is not None or row.data:
                            session.add(row)
                        return
                    for field, value in fields.items():
                        setattr(row, field, value)
                    if row.state is None and not row.data:
                        await session.delete(row)
                return
            except IntegrityError:
                continue
