"""PostgreSQL: the `jobs` table, one row per Gemini job (a shard's, or an attempt's).

A row holds its admission slot from the moment its creation starts (`creating`) until
it is terminal; every pod admits under one transaction-scoped advisory lock, so the
counts stay right through crashes and restarts without any pod keeping state.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import asyncpg

from consumers.store.errors import db_errors

ACTIVE = ("creating", "pending", "running")

_ADMIT = """
WITH active AS (
    SELECT count(*) AS jobs,
           coalesce(sum(est_tokens) FILTER (WHERE model = $7), 0) AS tokens
    FROM (
        SELECT b.model, j.est_tokens
        FROM batchyard.jobs j JOIN batchyard.batches b USING (batch_id)
        -- a creation counts until it is known not to exist: the sweep reconciles it
        WHERE j.state IN ('creating', 'pending', 'running')
        UNION ALL  -- a pack is one job, one slot (CONTRACT §12)
        SELECT model, est_tokens FROM batchyard.packs
        WHERE state IN ('creating', 'pending', 'running')
    ) a
)
INSERT INTO batchyard.jobs (batch_id, attempt, shard, display_name, state, items, est_tokens)
SELECT $1, $2, $9::integer, $3, 'creating', $4, $5::bigint FROM active
WHERE active.jobs < $6::bigint AND ($8::bigint = 0 OR active.tokens + $5::bigint <= $8::bigint)
RETURNING state
"""
_PROGRESS = """
WITH before AS (
    SELECT coalesce(requests_succeeded, 0) + coalesce(requests_failed, 0) AS done
    FROM batchyard.jobs WHERE batch_id = $1 AND attempt = $2 AND shard = $3
    AND state IN ('pending', 'running') FOR UPDATE
)
UPDATE batchyard.jobs j
SET state = $4, requests_succeeded = coalesce($5, j.requests_succeeded),
    requests_failed = coalesce($6, j.requests_failed), polled_at = now()
FROM before
WHERE j.batch_id = $1 AND j.attempt = $2 AND j.shard = $3
RETURNING greatest(coalesce($5, 0) + coalesce($6, 0) - before.done, 0)
"""
_FILE_STATES = """
SELECT f.name, f.attempt, j.state, b.status, b.attempt AS batch_attempt
FROM unnest($1::text[], $2::text[], $3::int[], $4::int[]) AS f(name, batch_id, attempt, shard)
LEFT JOIN batchyard.jobs j USING (batch_id, attempt, shard)
LEFT JOIN batchyard.batches b USING (batch_id)
"""
# Only rows no message will settle: the batch has moved past their attempt (finished,
# dead, or on a later attempt). A live attempt's rows belong to its submit and poll
# messages; settling them here would race the poll that ingests the job's results.
_STALE = """
SELECT j.batch_id, j.attempt, j.shard, j.job_name, j.display_name, j.state,
       j.created_at < now() - make_interval(secs => $2) AS abandoned
FROM batchyard.jobs j LEFT JOIN batchyard.batches b USING (batch_id)
WHERE j.state IN ('creating', 'pending', 'running')
  AND j.created_at < now() - make_interval(secs => $1)
  AND (b.batch_id IS NULL OR b.attempt <> j.attempt OR b.status <> ALL($4::text[]))
ORDER BY j.created_at LIMIT $3
"""


class Jobs:
    def __init__(self, pool: asyncpg.Pool):
        self.pool = pool

    async def reserve(self, batch_id: str, attempt: int, shard: int, display_name: str,
                      items: int, est_tokens: int, model: str, max_jobs: int,
                      max_tokens: int) -> str | None:
        """"new" when a slot was taken, "again" when an earlier try holds it, None when
        there is no room."""
        async with db_errors(), self.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext('batchyard.admission'))")
            if await conn.fetchval(
                    "SELECT true FROM batchyard.jobs WHERE batch_id = $1 AND attempt = $2 "
                    "AND shard = $3", batch_id, attempt, shard):
                return "again"
            state = await conn.fetchval(_ADMIT, batch_id, attempt, display_name, items,
                                        est_tokens, max_jobs, model, max_tokens, shard)
        return None if state is None else "new"

    async def created(self, batch_id: str, attempt: int, shard: int, job_name: str,
                      input_file: str | None) -> None:
        async with db_errors():
            await self.pool.execute(
                "UPDATE batchyard.jobs SET state = 'pending', job_name = $3, input_file = $4 "
                "WHERE batch_id = $1 AND attempt = $2 AND shard = $5", batch_id, attempt,
                job_name, input_file, shard)

    async def progress(self, batch_id: str, attempt: int, shard: int, state: str,
                       succeeded: int | None, failed: int | None) -> int:
        """Record a live job's state and counts; returns the requests done since the
        last record (the row keeps the pods agreed on it)."""
        async with db_errors():
            gained = await self.pool.fetchval(_PROGRESS, batch_id, attempt, shard, state,
                                              succeeded, failed)
        return int(gained or 0)

    async def release(self, batch_id: str, attempt: int, shard: int) -> None:
        """Give back a slot whose job was never created."""
        async with db_errors():
            await self.pool.execute(
                "DELETE FROM batchyard.jobs WHERE batch_id = $1 AND attempt = $2 AND shard = $3 "
                "AND state = 'creating'", batch_id, attempt, shard)

    async def finished(self, batch_id: str, attempt: int, shard: int, state: str,
                       failures: str | None) -> None:
        """Terminal: the slot is free. A shard keeps its failed items (JSON) until its
        whole attempt is settled."""
        async with db_errors():
            await self.pool.execute(
                "UPDATE batchyard.jobs SET state = $3, finished_at = now(), failures = $5 "
                "WHERE batch_id = $1 AND attempt = $2 AND shard = $4 "
                "AND state IN ('creating', 'pending', 'running')", batch_id, attempt, state,
                shard, failures)

    async def active(self) -> tuple[int, int]:
        """Jobs counted as active, and their estimated tokens."""
        async with db_errors():
            row = await self.pool.fetchrow(
                "SELECT count(*) AS jobs, coalesce(sum(est_tokens), 0) AS tokens FROM ("
                " SELECT est_tokens FROM batchyard.jobs"
                " WHERE state IN ('creating', 'pending', 'running') UNION ALL"
                " SELECT est_tokens FROM batchyard.packs"
                " WHERE state IN ('creating', 'pending', 'running')) a")
        return int(row["jobs"]), int(row["tokens"])

    async def of_attempt(self, batch_id: str, attempt: int) -> list[asyncpg.Record]:
        """The attempt's rows, shard by shard."""
        async with db_errors():
            return list(await self.pool.fetch(
                "SELECT * FROM batchyard.jobs WHERE batch_id = $1 AND attempt = $2"
                " ORDER BY shard", batch_id, attempt))

    async def file_states(self, names: Sequence[str], batch_ids: Sequence[str],
                          attempts: Sequence[int], shards: Sequence[int],
                          ) -> list[asyncpg.Record]:
        """For input files named after jobs: their job's state and their batch's."""
        async with db_errors():
            return list(await self.pool.fetch(_FILE_STATES, names, batch_ids, attempts,
                                              shards))

    async def stale(self, older_than: float, abandoned_after: float, limit: int,
                    live: Collection[str]) -> list[asyncpg.Record]:
        """Rows active for longer than `older_than` seconds whose attempt is over."""
        async with db_errors():
            return list(await self.pool.fetch(_STALE, older_than, abandoned_after, limit,
                                              list(live)))
