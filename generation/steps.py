"""The step journal: `await steps.run("name", fn)` runs `fn` once per generation and saves its result.

A rerun of the pipeline (a retry, a restarted worker, Plan B resuming after a restart) gets the saved
result back instead of doing the work again: a prediction is created once, its id is awaited again.
Results must be JSON: ids, URLs, small dicts. Never bytes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from generation.store import Database, Step

T = TypeVar("T")


class StepJournal:
    def __init__(self, db: Database, generation_id: str) -> None:
        self.db = db
        self.generation_id = generation_id
        self._done: dict[str, Any] | None = None

    async def load(self) -> dict[str, Any]:
        if self._done is None:
            async with self.db.sessions() as session:
                rows = await session.execute(
                    select(Step.name, Step.result).where(Step.generation_id == self.generation_id)
                )
                self._done = {name: result for name, result in rows}
        return self._done

    async def saved(self, name: str) -> Any:
        """The saved result of a step, or None when it has not run."""
        return (await self.load()).get(name)

    async def refresh(self, name: str) -> Any:
        """Read a step from the database again: another process (a webhook) may have journaled it."""
        done = await self.load()
        if name in done:
            return done[name]
        async with self.db.sessions() as session:
            row = await session.scalar(
                select(Step).where(Step.generation_id == self.generation_id, Step.name == name)
            )
        if row is None:
            return None
        done[name] = row.result
        return row.result

    async def is_done(self, name: str) -> bool:
        return name in await self.load()

    async def run(self, name: str, fn: Callable[[], Awaitable[T]], *, shielded: bool = False) -> T:
        """`shielded` for paid calls: a cancellation (a stopping process) waits until the call's
        result is journaled, so the next run finds it instead of paying again."""
        done = await self.load()
        if name in done:
            return done[name]  # type: ignore[no-any-return]

        async def call_and_record() -> None:
            await self.record(name, await fn())

        if shielded:
            task = asyncio.ensure_future(call_and_record())
            try:
                await asyncio.shield(task)
            except asyncio.CancelledError:
                await task  # finish journaling the paid call, then stop
                raise
        else:
            await call_and_record()
        return done[name]  # type: ignore[no-any-return]

    async def record(self, name: str, result: Any) -> None:
        done = await self.load()
        try:
            async with self.db.transaction() as session:
                session.add(Step(generation_id=self.generation_id, name=name, result=result))
        except IntegrityError:
            # Another runner journaled it first (only possible after a lease expired under a live
            # runner); the first record wins, so everyone continues from the same result.
            async with self.db.sessions() as session:
                result = await session.scalar(
                    select(Step.result).where(Step.generation_id == self.generation_id, Step.name == name)
                )
        done[name] = result
