"""The reconciler against real Redis (arq's keys) and both databases: a generation released long ago
whose job a worker has only just started is left to that worker; one whose in-progress mark is as
old as its stillness (a worker that died handing it back) is handed to another."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import cast

import pytest
from arq.connections import ArqRedis, RedisSettings, create_pool
from arq.constants import in_progress_key_prefix
from sqlalchemy import update

from generation.services import Services
from generation.store import Database, Generation, GenerationStatus, Plan
from generation.users import ensure_user
from jobs.queue import ArqQueue, in_progress_seconds
from jobs.reconciler import STALE_AFTER, reconcile
from settings import load_settings


@pytest.fixture
async def pool(redis_url: str) -> AsyncIterator[ArqRedis]:
    arq_pool = await create_pool(RedisSettings.from_dsn(redis_url))
    yield arq_pool
    await arq_pool.aclose()


async def released_long_ago(db: Database) -> str:
    """A Plan A generation between two tries (running, its lease released) nobody touched for a minute."""
    async with db.transaction() as session:
        user, _ = await ensure_user(session, "main", 1, username=None, language="en")
        generation = Generation(
            request_key="released",
            kind="text_to_image",
            user_id=user.id,
            bot_name="main",
            model="flux-schnell",
            request={},
            plan=Plan.A,
            status=GenerationStatus.running,
            attempts=1,
        )
        session.add(generation)
        await session.flush()
        moment = datetime.now(UTC) - timedelta(seconds=60)
        await session.execute(
            update(Generation)
            .where(Generation.id == generation.id)
            .values(created_at=moment, updated_at=moment)
        )
        return generation.id


@pytest.mark.parametrize("mark_age", [0.0, STALE_AFTER + 5])
async def test_a_job_started_just_now_keeps_its_in_progress_mark(
    db: Database, pool: ArqRedis, database_url: str, mark_age: float
) -> None:
    settings = load_settings(_env_file=None, database_url=database_url, reconcile_grace=1)
    services = cast(Services, SimpleNamespace(settings=settings, db=db))
    generation_id = await released_long_ago(db)
    await ArqQueue(pool).enqueue(generation_id)
    # What arq's worker sets as it starts the job, `mark_age` seconds ago.
    time_to_live = in_progress_seconds(settings.job_timeout) - mark_age
    await pool.psetex(in_progress_key_prefix + generation_id, int(time_to_live * 1000), b"1")

    assert await reconcile(services, pool) == []  # its job is still in Redis either way
    still_marked = bool(await pool.exists(in_progress_key_prefix + generation_id))
    assert still_marked == (mark_age == 0.0)
