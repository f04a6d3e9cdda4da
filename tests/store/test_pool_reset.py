"""The pool's cheap reset (consumers/connect.py): a connection goes back to the pool
with no advisory lock and no LISTEN of ours, whatever happened while it was out."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest

from consumers.connect import create_pool
from consumers.settings import Settings
from consumers.store import batches
from consumers.store.batches import Store
from consumers.store.packs import Packs

HELD = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"


@pytest.fixture
async def pool(migrated_url: str) -> AsyncIterator[asyncpg.Pool]:
    # One connection: whatever the code under test leaves on it, the next query meets.
    pool = await create_pool(Settings.from_env({"DATABASE_URL": migrated_url}),
                             min_size=1, max_size=1)
    yield pool
    await pool.close()


async def _free(url: str, batch_id: str) -> bool:
    """Whether another session can take the batch's claim (and gives it back)."""
    other = await asyncpg.connect(url)
    try:
        got = await other.fetchval(
            "SELECT pg_try_advisory_lock(hashtext('batchyard'), hashtext($1))", batch_id)
        return bool(got)
    finally:
        await other.close()


async def test_a_claim_and_a_listen_leave_nothing_behind(pool: asyncpg.Pool,
                                                         migrated_url: str) -> None:
    async with Store(pool).claim("b1") as claimed:
        assert claimed
        assert not await _free(migrated_url, "b1")
    assert await pool.fetchval(HELD) == 0
    assert await _free(migrated_url, "b1")
    async with Packs(pool).woken(lambda: None) as listening:
        assert listening()
    assert await pool.fetch("SELECT pg_listening_channels()") == []


async def test_a_claim_cut_short_in_its_unlock_closes_its_connection(
        pool: asyncpg.Pool, migrated_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A task cancelled while it gives its claim back (a pod stopping) must not hand
    the pool a connection that still holds the claim: every later claim of the batch
    by another pod would be refused while this pod lives."""
    monkeypatch.setattr(batches, "_UNLOCK", "SELECT pg_sleep(1), " + batches._UNLOCK[7:])
    entered = asyncio.Event()

    async def step() -> None:
        async with Store(pool).claim("b2") as claimed:
            assert claimed
            entered.set()

    task = asyncio.create_task(step())
    await entered.wait()
    await asyncio.sleep(0.3)  # into the slow unlock
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # The server ends a closed connection's session once its statement is over.
    for _ in range(50):
        if await _free(migrated_url, "b2"):
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError("the claim outlived its cancelled unlock")
    assert await pool.fetchval(HELD) == 0  # the pool made a new connection
