"""The reconciler (an arq cron job): the database is the source of truth, Redis only the transport.

A Plan A generation that is not finished, that no worker holds (its lease expired or was released)
and that Redis has no job for — Redis lost its data, or the process died between commit and enqueue —
is enqueued again under its own id; one whose worker died (its lease expired) is handed to another
worker at once rather than after arq's in-progress timeout. The rerun resumes from its step journal:
it waits on the journaled prediction (asking the provider where it stands) rather than creating a
new one.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix, job_key_prefix, result_key_prefix
from loguru import logger
from sqlalchemy import select

from generation.services import Services
from generation.store import Generation, GenerationStatus, Plan
from jobs.queue import ArqQueue


async def orphaned_plan_a(services: Services) -> list[tuple[str, bool]]:
    """Plan A generations that no live runner holds: (id, whether a runner died holding it)."""
    now = time.time()
    async with services.db.sessions() as session:
        rows = await session.execute(
            select(Generation.id, Generation.created_at, Generation.lease_expires_at).where(
                Generation.plan == Plan.A,
                Generation.status.in_([GenerationStatus.queued, GenerationStatus.running]),
                (Generation.lease_expires_at.is_(None)) | (Generation.lease_expires_at < now),
            )
        )
        grace = services.settings.reconcile_grace
        return [(id_, lease is not None) for id_, created, lease in rows if _age(created, now) > grace]


def _age(created: datetime | None, now: float) -> float:
    if created is None:
        return float("inf")
    # SQLite gives naive datetimes (the server's UTC clock): read them as UTC.
    aware = created if created.tzinfo is not None else created.replace(tzinfo=UTC)
    return now - aware.timestamp()


async def reconcile(services: Services, pool: ArqRedis) -> list[str]:
    """Enqueue every Plan A generation Redis does not know; answers their ids."""
    requeued = []
    for generation_id, runner_died in await orphaned_plan_a(services):
        if runner_died and await pool.delete(in_progress_key_prefix + generation_id):
            # Its runner stopped renewing its lease (killed, or its job cancelled with a lost Redis
            # connection); arq would keep the job marked in progress until its own timeout.
            logger.bind(generation=generation_id, plan="A").warning("its worker died: handed to another")
        if await pool.exists(job_key_prefix + generation_id, in_progress_key_prefix + generation_id):
            continue
        # A kept result of an earlier run (it ended without settling) would make arq refuse the id.
        await pool.delete(result_key_prefix + generation_id)
        await ArqQueue(pool).enqueue(generation_id)
        requeued.append(generation_id)
        logger.bind(generation=generation_id, plan="A").warning("re-enqueued: Redis had no job for it")
    return requeued


async def reconcile_job(ctx: dict[str, Any]) -> int:
    """arq cron entry point."""
    return len(await reconcile(ctx["services"], ctx["redis"]))
