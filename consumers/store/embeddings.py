"""PostgreSQL: stored vectors looked up and copied (reuse, CONTRACT §13)."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from consumers.store.errors import db_errors

CHUNK = 5000  # items per lookup-and-copy round trip

# An item's own row first: re-submitted with the same text, it keeps that row.
_COPY = """
WITH wanted AS (
    SELECT * FROM unnest($1::text[], $2::bytea[]) AS w(item_id, sha)
), found AS (
    SELECT DISTINCT ON (w.item_id) w.item_id, w.sha, e.dims, e.embedding
    FROM wanted w JOIN batchyard.embeddings e
      ON e.text_sha256 = w.sha AND e.model = $3 AND e.dims = $4
     AND e.task_type IS NOT DISTINCT FROM $5
    ORDER BY w.item_id, e.item_id = w.item_id DESC
), copied AS (
    INSERT INTO batchyard.embeddings AS t
        (item_id, model, batch_id, dims, embedding, task_type, text_sha256)
    SELECT item_id, $3, $6, dims, embedding, $5, sha FROM found
    ON CONFLICT (item_id, model) DO UPDATE
    SET batch_id = EXCLUDED.batch_id, dims = EXCLUDED.dims, embedding = EXCLUDED.embedding,
        task_type = EXCLUDED.task_type, text_sha256 = EXCLUDED.text_sha256, created_at = now()
    WHERE t.text_sha256 IS DISTINCT FROM EXCLUDED.text_sha256 OR t.dims <> EXCLUDED.dims
       OR t.task_type IS DISTINCT FROM EXCLUDED.task_type
)
SELECT item_id FROM found
"""

_SPREAD = """
INSERT INTO batchyard.embeddings AS t
    (item_id, model, batch_id, dims, embedding, task_type, text_sha256)
SELECT d.item_id, e.model, $3, e.dims, e.embedding, e.task_type, e.text_sha256
FROM unnest($1::text[], $2::text[]) AS d(item_id, source)
JOIN batchyard.embeddings e ON e.item_id = d.source AND e.model = $4
ON CONFLICT (item_id, model) DO UPDATE
SET batch_id = EXCLUDED.batch_id, dims = EXCLUDED.dims, embedding = EXCLUDED.embedding,
    task_type = EXCLUDED.task_type, text_sha256 = EXCLUDED.text_sha256, created_at = now()
"""


class Embeddings:
    def __init__(self, pool: asyncpg.Pool):
        self.pool = pool

    async def copy_stored(self, ids: Sequence[str], shas: Sequence[bytes], model: str,
                          dims: int, task_type: str | None, batch_id: str) -> set[str]:
        """Give each item whose text has a stored vector (same model, dims, task type) a
        copy of it; returns the ids that got one. One round trip per CHUNK items."""
        copied: set[str] = set()
        async with db_errors(), self.pool.acquire() as conn:
            for start in range(0, len(ids), CHUNK):
                found = await conn.fetch(_COPY, ids[start:start + CHUNK],
                                         shas[start:start + CHUNK], model, dims, task_type,
                                         batch_id)
                copied.update(r["item_id"] for r in found)
        return copied

    async def spread(self, items: Sequence[str], sources: Sequence[str], batch_id: str,
                     model: str) -> None:
        """Copy each source item's vector to the item beside it."""
        async with db_errors():
            await self.pool.execute(_SPREAD, items, sources, batch_id, model)

    async def ids_of(self, batch_id: str, model: str) -> set[str]:
        """Items of the batch that have a vector for `model`."""
        async with db_errors():
            rows = await self.pool.fetch(
                "SELECT item_id FROM batchyard.embeddings WHERE batch_id = $1 AND model = $2",
                batch_id, model)
        return {r["item_id"] for r in rows}
