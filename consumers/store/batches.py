"""PostgreSQL: the batches table and bulk embedding writes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypedDict

import asyncpg
import numpy as np

from consumers.status import FINISHED, INITIAL, Status, allowed_from
from consumers.store.embeddings import Embeddings
from consumers.store.errors import db_errors
from consumers.store.jobs import Jobs
from consumers.store.packs import Packs
from consumers.store.pgcopy import COLUMNS, encode_rows
from consumers.store.reports import Reports

CLAIM_WAIT = 30.0  # a claim waits this long for a connection, then the message naks

_WRITE_EMBEDDINGS = """
INSERT INTO batchyard.embeddings (item_id, model, batch_id, dims, embedding, task_type,
                                  text_sha256)
SELECT item_id, model, batch_id, dims, embedding, task_type, text_sha256
FROM pg_temp.embeddings_in
ON CONFLICT (item_id, model) DO UPDATE
SET batch_id = EXCLUDED.batch_id, dims = EXCLUDED.dims, embedding = EXCLUDED.embedding,
    task_type = EXCLUDED.task_type, text_sha256 = EXCLUDED.text_sha256, created_at = now()
"""
_PAST = """
SELECT b.batch_id IS NULL OR b.status = ANY($3) OR b.attempt > o.attempt AS past
FROM unnest($1::text[], $2::int[]) WITH ORDINALITY AS o(batch_id, attempt, n)
LEFT JOIN batchyard.batches b USING (batch_id)
ORDER BY o.n
"""


class Where(TypedDict, total=False):
    """What a batch row must say for an update to apply."""
    attempt: int
    status: Status | Collection[Status]


class Store:
    def __init__(self, pool: asyncpg.Pool):
        self.pool = pool
        self.jobs = Jobs(pool)
        self.embeddings = Embeddings(pool)
        self.reports = Reports(pool)
        self.packs = Packs(pool)

    async def ping(self) -> bool:
        return bool(await self.pool.fetchval("SELECT true"))

    async def unpark(self, batch_ids: Sequence[str], to: Status) -> None:
        """Put parked batches back to `to` for their replay (only those still parked)."""
        async with db_errors():
            await self.pool.execute(
                "UPDATE batchyard.batches SET status = $2, last_error = NULL, "
                "updated_at = now() WHERE batch_id = ANY($1) AND status = ANY($3)",
                list(batch_ids), to, list(allowed_from(to, "auth_failed")))

    async def past(self, batch_ids: Sequence[str], attempts: Sequence[int],
                   ) -> list[bool]:
        """For each (batch, attempt): whether the batch is gone, finished, or on a later
        attempt, so that nothing of that attempt is needed any more."""
        async with db_errors():
            rows = await self.pool.fetch(_PAST, list(batch_ids), list(attempts),
                                         list(FINISHED))
        return [bool(r["past"]) for r in rows]

    @asynccontextmanager
    async def claim(self, batch_id: str) -> AsyncIterator[bool]:
        """Hold a session advisory lock on the batch while a step runs.

        The lock lives as long as the connection: a pod that dies loses it at once,
        so there is never a stale claim to expire.
        """
        async with db_errors(), self.pool.acquire(timeout=CLAIM_WAIT) as conn:
            got = await conn.fetchval(
                "SELECT pg_try_advisory_lock(hashtext('batchyard'), hashtext($1))", batch_id)
            try:
                yield bool(got)
            finally:
                if got and not conn.is_closed():
                    await _unlock(conn, batch_id)

    async def get(self, batch_id: str) -> asyncpg.Record | None:
        async with db_errors():
            return await self.pool.fetchrow(
                "SELECT * FROM batchyard.batches WHERE batch_id = $1", batch_id)

    async def create_or_get(self, batch_id: str, model: str, items: int, attempt: int,
                            source: str | None) -> asyncpg.Record:
        """Insert the batch as pending_submission unless it exists; return the row."""
        async with db_errors():
            row = await self.pool.fetchrow(
                """INSERT INTO batchyard.batches
                   (batch_id, status, model, items_total, attempt, source)
                   VALUES ($1, $6, $2, $3, $4, $5)
                   ON CONFLICT (batch_id) DO NOTHING RETURNING *""",
                batch_id, model, items, attempt, source, INITIAL)
            if row is None:
                row = await self.pool.fetchrow(
                    "SELECT * FROM batchyard.batches WHERE batch_id = $1", batch_id)
            assert row is not None
            return row

    async def move(self, batch_id: str, to: Status, *, on_attempt: int | None = None,
                   from_: Status | Collection[Status] | None = None, **values: Any) -> bool:
        """Move the batch to status `to`, setting `values`, if the table lets it go there
        from its status (only from `from_` when given) and it is on `on_attempt` when
        given; True if it moved."""
        if "status" in values:
            raise TypeError("the status to move to is `to`")
        where: Where = {"status": allowed_from(to, from_)}
        if on_attempt is not None:
            where["attempt"] = on_attempt
        return await self._set(batch_id, where, {**values, "status": to})

    async def update(self, batch_id: str, where: Where | None = None,
                     **values: Any) -> bool:
        """Set `values` on the batch if its columns match `where`; True if a row changed.
        The status is never set here: every change of it is a `move`."""
        if "status" in values:
            raise TypeError("a status change goes through Store.move")
        return await self._set(batch_id, where or {}, values)

    async def _set(self, batch_id: str, where: Where, values: dict[str, Any]) -> bool:
        cols = list(values)
        sets = ", ".join(f"{c} = ${i}" for i, c in enumerate(cols, 2))
        args: list[Any] = [batch_id, *values.values()]
        conds = ["batch_id = $1"]
        for c, v in where.items():
            if isinstance(v, list | tuple | frozenset | set):
                args.append(list(v))
                conds.append(f"{c} = ANY(${len(args)})")
            else:
                args.append(v)
                conds.append(f"{c} = ${len(args)}")
        sql = (f"UPDATE batchyard.batches SET {sets}, updated_at = now() "
               f"WHERE {' AND '.join(conds)}")
        async with db_errors():
            result = await self.pool.execute(sql, *args)
        return bool(result != "UPDATE 0")

    async def record_path(self, batch_id: str, path: str) -> None:
        """Note that `path` (batch or online) produced embeddings of this batch."""
        async with db_errors():
            await self.pool.execute(
                "UPDATE batchyard.batches SET embed_path = CASE WHEN embed_path IS NULL "
                "OR embed_path = $2 THEN $2 ELSE 'both' END WHERE batch_id = $1",
                batch_id, path)

    async def delete_embeddings(self, model: str, batch_id: str, item_ids: list[str]) -> None:
        """Take back vectors written for these items by this batch."""
        if item_ids:
            async with db_errors():
                await self.pool.execute(
                    "DELETE FROM batchyard.embeddings WHERE model = $1 AND batch_id = $2 "
                    "AND item_id = ANY($3::text[])", model, batch_id, item_ids)

    async def write_embeddings(self, model: str, batch_id: str,
                               rows: Sequence[tuple[str, np.ndarray]],
                               normalize: bool = False, *, task_type: str | None = None,
                               shas: Sequence[bytes | None] | None = None) -> None:
        """Upsert embeddings by (item_id, model) at COPY speed, at unit length if `normalize`.

        New items, the usual case, are copied straight into the table; if any is already
        there, the transaction rolls back and the rows go through a temporary table
        and INSERT … ON CONFLICT DO UPDATE instead.
        """
        if not rows:
            return
        data = encode_rows(model, batch_id, rows, normalize, task_type=task_type, shas=shas)
        async with db_errors(), self.pool.acquire() as conn:
            try:
                async with conn.transaction():
                    await conn.copy_to_table("embeddings", schema_name="batchyard",
                                             source=_chunks(data), columns=COLUMNS,
                                             format="binary")
                return
            except asyncpg.UniqueViolationError:
                pass
            async with conn.transaction():
                await conn.execute(
                    "CREATE TEMP TABLE IF NOT EXISTS embeddings_in "
                    "(item_id text, model text, batch_id text, dims integer, embedding real[],"
                    " task_type text, text_sha256 bytea) ON COMMIT DELETE ROWS")
                await conn.copy_to_table("embeddings_in", source=_chunks(data),
                                         columns=COLUMNS, format="binary")
                await conn.execute(_WRITE_EMBEDDINGS)


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    """COPY data as an async iterable: asyncpg reads a file-like source through a thread,
    and its reader keeps the buffer in a reference cycle until a full collection."""
    yield data


_UNLOCK = "SELECT pg_advisory_unlock(hashtext('batchyard'), hashtext($1))"


async def _unlock(conn: asyncpg.Connection, batch_id: str) -> None:
    """Give the claim back, or close the connection (which gives it back): the pool
    does not reset its connections' locks (consumers/connect.py)."""
    try:
        await conn.execute(_UNLOCK, batch_id)
    except BaseException:
        conn.terminate()
        raise
