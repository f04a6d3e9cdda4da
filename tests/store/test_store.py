"""Embedding writes over a real PostgreSQL: binary COPY, upsert, values preserved."""

from __future__ import annotations

import asyncpg
import numpy as np

from consumers.store.batches import Store


async def test_copy_then_upsert_keeps_one_row_per_item(migrated_url: str) -> None:
    """New rows are copied; a re-embedded item is overwritten, never duplicated."""
    pool = await asyncpg.create_pool(migrated_url, min_size=1, max_size=2)
    assert pool is not None
    store = Store(pool)
    rng = np.random.default_rng(1)
    first = [(f"i{n}", rng.standard_normal(768).astype(np.float32)) for n in range(300)]
    await store.write_embeddings("m", "b1", first)
    again = [(f"i{n}", rng.standard_normal(768).astype(np.float32)) for n in range(250, 320)]
    await store.write_embeddings("m", "b2", again)
    rows = await pool.fetch("SELECT item_id, batch_id, dims, embedding FROM "
                            "batchyard.embeddings ORDER BY item_id")
    assert len(rows) == 320
    by_id = {r["item_id"]: r for r in rows}
    np.testing.assert_array_equal(np.array(by_id["i3"]["embedding"], dtype=np.float32),
                                  first[3][1])
    np.testing.assert_array_equal(np.array(by_id["i260"]["embedding"], dtype=np.float32),
                                  again[10][1])
    assert by_id["i3"]["batch_id"] == "b1" and by_id["i260"]["batch_id"] == "b2"
    assert {r["dims"] for r in rows} == {768}
    await store.write_embeddings("other-model", "b3", first[:5])
    assert await pool.fetchval("SELECT count(*) FROM batchyard.embeddings") == 325
    await pool.close()


async def test_vectors_of_different_lengths_in_one_write(migrated_url: str) -> None:
    """A model of unknown dimensions may answer vectors of several lengths: each row
    keeps its own, bit for bit."""
    pool = await asyncpg.create_pool(migrated_url, min_size=1, max_size=2)
    assert pool is not None
    rng = np.random.default_rng(2)
    rows = [(f"v{i}", rng.standard_normal(n).astype(np.float32))
            for i, n in enumerate((3, 5, 1, 3))]
    await Store(pool).write_embeddings("lengths", "b", rows)
    stored = {r["item_id"]: r for r in await pool.fetch(
        "SELECT item_id, dims, embedding FROM batchyard.embeddings WHERE model = 'lengths'")}
    for item_id, vector in rows:
        assert stored[item_id]["dims"] == vector.size
        np.testing.assert_array_equal(np.array(stored[item_id]["embedding"], dtype=np.float32),
                                      vector)
    await pool.close()
