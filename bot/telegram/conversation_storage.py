"""aiogram's FSM storage in the database: a pending /voice or /train survives a restart, is seen by every
`aibot run` process, and needs no Redis, so it works on Plan B while Redis is down."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiogram.fsm.state import State
from aiogram.fsm.storage.base import BaseStorage, DefaultKeyBuilder, StorageKey
from sqlalchemy import Row, select
from sqlalchemy.exc import IntegrityError

from generation.store import ConversationState, Database


class DatabaseStorage(BaseStorage):
    def __init__(self, db: Database) -> None:
        self.db = db
        # bot, chat, user (and thread, business connection, destiny when set): one key per conversation
        self.keys = DefaultKeyBuilder(with_bot_id=True, with_destiny=True)

    async def set_state(self, key: StorageKey, state: str | State | None = None) -> None:
        name = state.state if isinstance(state, State) else state
        await self._write(key, state=name)

    async def get_state(self, key: StorageKey) -> str | None:
        row = await self._read(key)
        return row.state if row is not None else None

    async def set_data(self, key: StorageKey, data: Mapping[str, Any]) -> None:
        await self._write(key, data=dict(data))

    async def get_data(self, key: StorageKey) -> dict[str, Any]:
        row = await self._read(key)
        return dict(row.data or {}) if row is not None else {}

    async def close(self) -> None:
        return None  # the database belongs to the process's services, which close it

    async def _read(self, key: StorageKey) -> Row[tuple[str | None, Any]] | None:
        """The conversation's state and data (read at every update: as plain columns, not an object)."""
        async with self.db.reads() as connection:
            result = await connection.execute(
                select(ConversationState.state, ConversationState.data).where(
                    ConversationState.key == self.keys.build(key)
                )
            )
            return result.first()

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
