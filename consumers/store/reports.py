"""PostgreSQL: what operators read (status, batches, reports, costs) and the gauges."""

from __future__ import annotations

from typing import Any

import asyncpg

from consumers.store.errors import db_errors

_TOKENS = """
SELECT model, sum(batch)::bigint AS batch, sum(online)::bigint AS online FROM (
    SELECT b.model, j.est_tokens AS batch, 0 AS online
    FROM batchyard.jobs j JOIN batchyard.batches b USING (batch_id)
    WHERE j.job_name IS NOT NULL AND ($1::text IS NULL OR j.batch_id = $1)
    UNION ALL
    SELECT p.model, m.est_tokens, 0
    FROM batchyard.pack_members m JOIN batchyard.packs p USING (pack_id)
    WHERE p.job_name IS NOT NULL AND ($1::text IS NULL OR m.batch_id = $1)
    UNION ALL
    SELECT model, 0, tokens_online FROM batchyard.batches
    WHERE tokens_online > 0 AND ($1::text IS NULL OR batch_id = $1)
) t GROUP BY model ORDER BY model
"""
# A pack is one job for admission (CONTRACT §12): the quota figures count both.
_LIVE = """
WITH live AS (
    SELECT est_tokens, items, false AS pack,
           coalesce(requests_succeeded, 0) + coalesce(requests_failed, 0) AS done
    FROM batchyard.jobs WHERE state IN ('creating', 'pending', 'running')
    UNION ALL
    SELECT est_tokens, items, true, 0
    FROM batchyard.packs WHERE state IN ('creating', 'pending', 'running'))
"""
_GAUGES = _LIVE + """
SELECT count(*) AS jobs, coalesce(sum(est_tokens), 0) AS tokens,
       extract(epoch FROM coalesce(
           greatest((SELECT max(finished_at) FROM batchyard.jobs),
                    (SELECT max(finished_at) FROM batchyard.packs)),
           least((SELECT min(created_at) FROM batchyard.jobs),
                 (SELECT min(created_at) FROM batchyard.packs)))) AS last_finished,
       (SELECT count(*) FROM batchyard.batches WHERE status = 'pending_submission')
           AS waiting
FROM live
"""
_ACTIVE = _LIVE + """
SELECT count(*) AS jobs, count(*) FILTER (WHERE pack) AS packs,
       coalesce(sum(est_tokens), 0) AS tokens, coalesce(sum(items), 0) AS requests,
       coalesce(sum(done), 0) AS requests_done,
       (SELECT count(*) FROM batchyard.packs WHERE state = 'open') AS packs_filling
FROM live
"""
_BATCHES = """
SELECT batch_id, status, model, attempt, items_total, items_embedded, items_failed, job_name,
       updated_at
FROM batchyard.batches WHERE $1::text IS NULL OR status = $1
ORDER BY updated_at DESC LIMIT $2
"""


class Reports:
    """Read-only queries, over a pool or one connection (the demo's)."""

    def __init__(self, db: asyncpg.Pool | asyncpg.Connection):
        self.db = db

    async def statuses(self) -> dict[str, int]:
        async with db_errors():
            rows = await self.db.fetch("SELECT status, count(*) AS n FROM batchyard.batches"
                                       " GROUP BY status ORDER BY status")
        return {r["status"]: int(r["n"]) for r in rows}

    async def status_of(self) -> dict[str, str]:
        """Every batch's status."""
        async with db_errors():
            rows = await self.db.fetch("SELECT batch_id, status FROM batchyard.batches")
        return {r["batch_id"]: r["status"] for r in rows}

    async def embedded(self, batch_id: str | None = None) -> int:
        """Stored vectors, of one batch or all."""
        async with db_errors():
            return int(await self.db.fetchval(
                "SELECT count(*) FROM batchyard.embeddings"
                " WHERE $1::text IS NULL OR batch_id = $1", batch_id))

    async def active(self) -> asyncpg.Record:
        """Active jobs: count, estimated tokens, requests, requests done."""
        async with db_errors():
            row: asyncpg.Record = await self.db.fetchrow(_ACTIVE)
        return row

    async def waiting(self) -> int:
        async with db_errors():
            return int(await self.db.fetchval(
                "SELECT count(*) FROM batchyard.batches WHERE status = 'pending_submission'"))

    async def gauges(self) -> asyncpg.Record:
        """What the pipeline gauges read: active jobs and tokens, the last job finished,
        batches waiting."""
        async with db_errors():
            row: asyncpg.Record = await self.db.fetchrow(_GAUGES)
        return row

    async def batches(self, state: str | None, limit: int) -> list[dict[str, Any]]:
        async with db_errors():
            return [dict(r) for r in await self.db.fetch(_BATCHES, state, int(limit))]

    async def jobs_of(self, batch_id: str) -> list[asyncpg.Record]:
        async with db_errors():
            return list(await self.db.fetch(
                "SELECT * FROM batchyard.jobs WHERE batch_id = $1 ORDER BY attempt, shard",
                batch_id))

    async def tokens(self, batch_id: str | None = None) -> list[asyncpg.Record]:
        """Tokens sent by model and path (batch jobs, online calls), of one batch or all."""
        async with db_errors():
            return list(await self.db.fetch(_TOKENS, batch_id))

    async def add_online_tokens(self, batch_id: str, tokens: int) -> None:
        async with db_errors():
            await self.db.execute(
                "UPDATE batchyard.batches SET tokens_online = tokens_online + $2"
                " WHERE batch_id = $1", batch_id, tokens)

    async def run_summary(self) -> dict[str, list[asyncpg.Record]]:
        """The markdown report's tables: by status, attempts, embed paths, slowest."""
        async with db_errors():
            return {
                "counts": await self.db.fetch(
                    "SELECT status, count(*) AS n, sum(items_total) AS items,"
                    " sum(items_embedded) AS embedded, sum(items_failed) AS failed"
                    " FROM batchyard.batches GROUP BY status ORDER BY status"),
                "attempts": await self.db.fetch(
                    "SELECT attempt, count(*) AS n FROM batchyard.batches"
                    " GROUP BY attempt ORDER BY attempt"),
                "paths": await self.db.fetch(
                    "SELECT coalesce(embed_path, '-') AS path, count(*) AS n,"
                    " sum(job_failures) AS job_failures FROM batchyard.batches"
                    " GROUP BY 1 ORDER BY 1"),
                "slow": await self.db.fetch(
                    "SELECT batch_id, status, items_total, attempt,"
                    " completed_at - created_at AS took FROM batchyard.batches"
                    " WHERE completed_at IS NOT NULL ORDER BY took DESC LIMIT 10"),
            }
