"""The reconciler (an arq cron job): the database is the source of truth, Redis only the transport.

A Plan A generation that is not finished, that no worker holds (its lease expired or was released)
and that Redis has no job for — Redis lost its data, or the process died between commit and enqueue —
is enqueued again under its own id; one whose worker died (its lease expired) is handed to another
worker at once rather than after arq's in-progress timeout. The rerun resumes from its step journal:
it waits on the journaled prediction (asking the provider where it stands) rather than creating a
new one.
"""

from __future__ import annotations

from typing import Any

from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix, job_key_prefix, result_key_prefix
from loguru import logger

from generation import lifecycle
from generation.services import Services
from generation.store import Generation, Plan, get_generation
from jobs.queue import ArqQueue, in_progress_seconds

# A released generation (waiting for the provider, or between tries) that nobody has touched for this
# long, yet whose job Redis still marks as running, lost that job with its worker's Redis connection.
STALE_AFTER = 10.0


async def orphaned_plan_a(services: Services) -> list[tuple[str, bool]]:
    """Plan A generations that no live runner holds: (id, whether a runner died holding it). Fresher
    than the grace period, one may still be on its way into Redis."""
    grace = services.settings.reconcile_grace
    return await lifecycle.orphans(
        services.db, Plan.A, older_than=grace, untouched_for=max(STALE_AFTER, 4 * grace)
    )


async def reconcile(services: Services, pool: ArqRedis) -> list[str]:
    """Enqueue every Plan A generation Redis does not know; answers their ids."""
    requeued = []
    candidates = await orphaned_plan_a(services)
    # One round trip for those whose runner did not die: thousands may wait in a line, each with its
    # job deferred in Redis, and looking them up one by one outlasted the cron job's timeout.
    known = await _jobs_in_redis(pool, [generation_id for generation_id, died in candidates if not died])
    for generation_id, runner_died in candidates:
        if generation_id in known:
            continue
        current: Generation | None = None
        if runner_died:
            current = await get_generation(services.db, generation_id)
            if not lifecycle.still_orphaned(current):
                continue  # claimed or settled since the snapshot: its job is alive
            if await _started_just_now(pool, generation_id, services.settings.job_timeout):
                continue  # a worker behind its queue just started its job: it is about to claim it
            if await pool.delete(in_progress_key_prefix + generation_id):
                # Its runner stopped renewing its lease (killed, or its job cancelled with a lost Redis
                # connection); arq would keep the job marked in progress until its own timeout.
                logger.bind(generation=generation_id, plan="A").warning("its worker died: handed to another")
        if await pool.exists(job_key_prefix + generation_id, in_progress_key_prefix + generation_id):
            continue
        if current is None and not lifecycle.still_orphaned(await get_generation(services.db, generation_id)):
            continue  # it settled since the snapshot (its job ended and left only a result)
        # A kept result of an earlier run (it ended without settling) would make arq refuse the id.
        await pool.delete(result_key_prefix + generation_id)
        await ArqQueue(pool).enqueue(generation_id)
        requeued.append(generation_id)
        logger.bind(generation=generation_id, plan="A").warning("re-enqueued: Redis had no job for it")
    return requeued


async def _started_just_now(pool: ArqRedis, generation_id: str, job_timeout: float) -> bool:
    """Whether a worker marked the generation's job in progress less than STALE_AFTER seconds ago.
    A released generation nobody touched for that long looks like one whose worker died handing it
    back; but a worker behind a long queue may start its job only now, just before the claim the
    reconciler's read came before. Deleting that fresh mark would let the job start a second time in
    the same worker, which arq does not survive (its bookkeeping of the first run is lost and the
    job is dropped). A mark left by a worker that died is as old as the generation's stillness."""
    remaining = await pool.pttl(in_progress_key_prefix + generation_id)
    return bool(remaining > 1000 * (in_progress_seconds(job_timeout) - STALE_AFTER))


async def _jobs_in_redis(pool: ArqRedis, generation_ids: list[str]) -> set[str]:
    """Those of `generation_ids` that have a job in Redis (queued, deferred or running)."""
    pipe = pool.pipeline(transaction=False)
    for generation_id in generation_ids:
        pipe.exists(job_key_prefix + generation_id, in_progress_key_prefix + generation_id)
    answers = await pipe.execute() if generation_ids else []
    return {generation_id for generation_id, found in zip(generation_ids, answers, strict=True) if found}


async def reconcile_job(ctx: dict[str, Any]) -> int:
    """arq cron entry point."""
    return len(await reconcile(ctx["services"], ctx["redis"]))
