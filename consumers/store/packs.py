"""PostgreSQL: packs of small batches that share one job (CONTRACT §12).

A pack and its members are committed before its job is created, so that a creation
whose outcome is unknown is adopted by the pack's display_name and never repeated.
Joins and admissions take transaction-scoped advisory locks: every pod agrees on which
pack is open and on how many jobs (packs included) hold a slot.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import asyncpg

from consumers.status import allowed_from
from consumers.store.errors import db_errors

# One open pack per (model, dims, task type) takes joins until the next would not fit.
_OPEN = """
SELECT pack_id, items, est_tokens FROM batchyard.packs
WHERE state = 'open' AND sealed_at IS NULL AND model = $1
  AND dims IS NOT DISTINCT FROM $2 AND task_type IS NOT DISTINCT FROM $3
ORDER BY created_at LIMIT 1 FOR UPDATE
"""
_ACTIVE_SLOTS = """
SELECT (SELECT count(*) FROM batchyard.jobs
        WHERE state IN ('creating', 'pending', 'running'))
     + (SELECT count(*) FROM batchyard.packs
        WHERE state IN ('creating', 'pending', 'running')) AS jobs,
       (SELECT coalesce(sum(j.est_tokens), 0) FROM batchyard.jobs j
        JOIN batchyard.batches b USING (batch_id)
        WHERE j.state IN ('creating', 'pending', 'running') AND b.model = $1)
     + (SELECT coalesce(sum(est_tokens), 0) FROM batchyard.packs
        WHERE state IN ('creating', 'pending', 'running') AND model = $1) AS tokens
"""
LOCK_JOIN = "SELECT pg_advisory_xact_lock(hashtext('batchyard.packs'))"
LOCK_ADMIT = "SELECT pg_advisory_xact_lock(hashtext('batchyard.admission'))"
# A slot given back or a pack sealed full wakes every sealer at once, rather than at its
# next look: with jobs of seconds, the look's interval is a share of the quota lost.
WAKE = "batchyard_sealer"


def new_pack_id() -> str:
    return "pk" + secrets.token_hex(16)


class Packs:
    def __init__(self, pool: asyncpg.Pool):
        self.pool = pool

    async def join(self, batch_id: str, attempt: int, model: str, dims: int | None,
                   task_type: str | None, items: int, est_tokens: int, max_tokens: int,
                   max_items: int) -> str:
        """Put the attempt in the open pack it fits (a full one is sealed and another
        opened); returns its pack id. Joining again is a no-op that returns the same."""
        async with db_errors(), self.pool.acquire() as conn, conn.transaction():
            await conn.execute(LOCK_JOIN)
            # A pack that ended with no job (its members parked for a bad key) holds the
            # attempt no longer: the replay joins another.
            await conn.execute(
                "DELETE FROM batchyard.pack_members m USING batchyard.packs p"
                " WHERE m.pack_id = p.pack_id AND m.batch_id = $1 AND m.attempt = $2"
                " AND p.job_name IS NULL AND p.state IN ('failed', 'cancelled')",
                batch_id, attempt)
            joined = await conn.fetchval(
                "SELECT pack_id FROM batchyard.pack_members WHERE batch_id = $1"
                " AND attempt = $2", batch_id, attempt)
            if joined is not None:
                return str(joined)
            pack = await conn.fetchrow(_OPEN, model, dims, task_type)
            if pack is not None and (pack["est_tokens"] + est_tokens > max_tokens
                                     or pack["items"] + items > max_items):
                await conn.execute("UPDATE batchyard.packs SET sealed_at = now()"
                                   " WHERE pack_id = $1", pack["pack_id"])
                await conn.execute("SELECT pg_notify($1, '')", WAKE)  # sent on commit
                pack = None
            if pack is None:
                pack_id = new_pack_id()
                await conn.execute(
                    "INSERT INTO batchyard.packs (pack_id, display_name, model, dims,"
                    " task_type) VALUES ($1, $2, $3, $4, $5)",
                    pack_id, f"pack:{pack_id}", model, dims, task_type)
            else:
                pack_id = pack["pack_id"]
            await conn.execute(
                "INSERT INTO batchyard.pack_members (pack_id, batch_id, attempt, items,"
                " est_tokens) VALUES ($1, $2, $3, $4, $5)",
                pack_id, batch_id, attempt, items, est_tokens)
            await conn.execute(
                "UPDATE batchyard.packs SET items = items + $2, est_tokens = est_tokens + $3"
                " WHERE pack_id = $1", pack_id, items, est_tokens)
            return str(pack_id)

    async def wake(self) -> None:
        """Wake the sealers (a slot came back)."""
        async with db_errors():
            await self.pool.execute("SELECT pg_notify($1, '')", WAKE)

    @asynccontextmanager
    async def woken(self, wake: Callable[[], None]) -> AsyncIterator[Callable[[], bool]]:
        """Call `wake` on every wake-up while inside; yields whether the listening
        connection is still alive (a restarted server drops it, and the caller comes back
        for another)."""
        async with db_errors(), self.pool.acquire() as conn:
            def listener(*_: object) -> None:
                wake()
            await conn.add_listener(WAKE, listener)
            try:
                yield lambda: not conn.is_closed()
            finally:
                if not conn.is_closed():
                    try:
                        await conn.remove_listener(WAKE, listener)
                    except BaseException:
                        conn.terminate()  # the pool does not UNLISTEN (consumers/connect.py)
                        raise

    async def due(self, wait: float, stuck_after: float, limit: int = 20) -> list[str]:
        """Packs to seal and create: full, or open for `wait`; and creations, hand-offs
        or parkings under way for `stuck_after` (their pod may have died)."""
        async with db_errors():
            rows = await self.pool.fetch(
                "SELECT pack_id FROM batchyard.packs p WHERE (state = 'open' AND (sealed_at"
                " IS NOT NULL OR created_at < now() - make_interval(secs => $1)))"
                " OR (state = 'creating' AND sealed_at < now() - make_interval(secs => $2))"
                " OR (((state IN ('pending', 'running') AND sealed_at < now()"
                " - make_interval(secs => $2)) OR (state = 'cancelled' AND job_name IS NULL"
                " AND finished_at < now() - make_interval(secs => $2))) AND EXISTS (SELECT 1"
                " FROM batchyard.pack_members m JOIN batchyard.batches b USING (batch_id)"
                " WHERE m.pack_id = p.pack_id AND b.attempt = m.attempt"
                " AND b.status = 'submitting'))"
                " ORDER BY created_at LIMIT $3", wait, stuck_after, limit)
        return [r["pack_id"] for r in rows]

    async def get(self, pack_id: str) -> asyncpg.Record | None:
        async with db_errors():
            row: asyncpg.Record | None = await self.pool.fetchrow(
                "SELECT * FROM batchyard.packs WHERE pack_id = $1", pack_id)
        return row

    async def member_rows(self, pack_id: str) -> list[asyncpg.Record]:
        """Each member's batches row, with the attempt it joined as `joined_attempt`."""
        async with db_errors():
            return await self.pool.fetch(
                "SELECT b.*, m.attempt AS joined_attempt FROM batchyard.pack_members m"
                " JOIN batchyard.batches b USING (batch_id) WHERE m.pack_id = $1"
                " ORDER BY m.batch_id", pack_id)

    async def submitted(self, members: list[tuple[str, int]], job_name: str,
                        input_file: str | None) -> None:
        """The pack's job exists: its members (batch id, attempt) still `submitting` on
        that attempt say `submitted` with its job_name, in one statement (the move the
        status table allows, for many rows at once)."""
        async with db_errors():
            await self.pool.execute(
                "UPDATE batchyard.batches b SET status = 'submitted', job_name = $3,"
                " input_file = $4, submitted_at = now(), last_error = NULL,"
                " updated_at = now() FROM unnest($1::text[], $2::int[]) AS m(batch_id,"
                " attempt) WHERE b.batch_id = m.batch_id AND b.attempt = m.attempt"
                " AND b.status = ANY($5)",
                [b for b, _ in members], [a for _, a in members], job_name, input_file,
                list(allowed_from("submitted", "submitting")))

    async def handing_off(self, pack_id: str) -> bool:
        """Whether a member is still `submitting` on the attempt it joined with: the
        pack's job exists, its hand-off is not done."""
        async with db_errors():
            return bool(await self.pool.fetchval(
                "SELECT EXISTS (SELECT 1 FROM batchyard.pack_members m JOIN"
                " batchyard.batches b USING (batch_id) WHERE m.pack_id = $1"
                " AND b.attempt = m.attempt AND b.status = 'submitting')", pack_id))

    async def files(self, pack_ids: list[str]) -> dict[str, asyncpg.Record]:
        """The packs named by input files: their state, job and input file."""
        async with db_errors():
            rows = await self.pool.fetch(
                "SELECT pack_id, state, job_name, input_file FROM batchyard.packs"
                " WHERE pack_id = ANY($1)", pack_ids)
        return {r["pack_id"]: r for r in rows}

    async def pack_of(self, batch_id: str, attempt: int) -> str | None:
        """The pack the attempt joined, if any."""
        async with db_errors():
            found = await self.pool.fetchval(
                "SELECT pack_id FROM batchyard.pack_members WHERE batch_id = $1"
                " AND attempt = $2", batch_id, attempt)
        return None if found is None else str(found)

    async def of_batch(self, batch_id: str) -> list[asyncpg.Record]:
        """The packs an attempt of the batch was in, with their jobs."""
        async with db_errors():
            return list(await self.pool.fetch(
                "SELECT m.attempt, p.pack_id, p.display_name, p.job_name, p.state,"
                " p.items AS pack_items, m.items, m.est_tokens FROM batchyard.pack_members m"
                " JOIN batchyard.packs p USING (pack_id) WHERE m.batch_id = $1"
                " ORDER BY m.attempt", batch_id))

    async def admit(self, pack_id: str, max_jobs: int, max_tokens: int) -> str | None:
        """Take the pack's slot: "new", "again" when an earlier try holds it (its creation
        may have made the job), None when there is no room (the pack stays sealed)."""
        async with db_errors(), self.pool.acquire() as conn, conn.transaction():
            await conn.execute(LOCK_ADMIT)
            pack = await conn.fetchrow("SELECT * FROM batchyard.packs WHERE pack_id = $1"
                                       " FOR UPDATE", pack_id)
            if pack is None or pack["state"] not in ("open", "creating"):
                return None
            if pack["state"] == "creating":
                return "again"
            active = await conn.fetchrow(_ACTIVE_SLOTS, pack["model"])
            if active["jobs"] >= max_jobs or (
                    max_tokens and active["tokens"] + pack["est_tokens"] > max_tokens):
                return None
            await conn.execute(
                "UPDATE batchyard.packs SET state = 'creating', sealed_at = coalesce("
                "sealed_at, now()) WHERE pack_id = $1", pack_id)
            # Sealed at last: no batch joins it from now on.
            return "new"

    async def release(self, pack_id: str) -> None:
        """Give back the slot of a creation the API refused (a 429): sealed, waiting."""
        async with db_errors():
            await self.pool.execute(
                "UPDATE batchyard.packs SET state = 'open', sealed_at = coalesce(sealed_at,"
                " now()) WHERE pack_id = $1 AND state = 'creating'", pack_id)

    async def created(self, pack_id: str, job_name: str, input_file: str | None) -> None:
        async with db_errors():
            await self.pool.execute(
                "UPDATE batchyard.packs SET state = 'pending', job_name = $2, input_file = $3"
                " WHERE pack_id = $1 AND state = 'creating'", pack_id, job_name, input_file)

    async def progress(self, pack_id: str, state: str) -> None:
        async with db_errors():
            await self.pool.execute(
                "UPDATE batchyard.packs SET state = $2 WHERE pack_id = $1"
                " AND state IN ('pending', 'running')", pack_id, state)

    async def finished(self, pack_id: str, state: str) -> None:
        """Terminal: the slot is free."""
        async with db_errors():
            await self.pool.execute(
                "UPDATE batchyard.packs SET state = $2, finished_at = now() WHERE pack_id = $1"
                " AND state IN ('creating', 'pending', 'running')", pack_id, state)
