"""Result ingestion (read, parse, validate, upsert) vs raw copy_records_to_table."""

from __future__ import annotations

import asyncio
import random
import resource
import time
from types import SimpleNamespace
from typing import Any

import asyncpg
import msgspec

from consumers.inputs import Input
from consumers.migrate import Migrator
from consumers.results import Ingest
from consumers.store import Store
from events.payloads import Item, SubmitRequest
from sandbox.pg import postgres_server

CHUNK = 1024 * 1024


def results_file(n: int, dims: int, seed: int = 5) -> tuple[bytes, list[list[float]]]:
    rng = random.Random(seed)
    vectors = [[rng.uniform(-1, 1) for _ in range(dims)] for _ in range(n)]
    lines = [msgspec.json.encode({"key": f"i{k}", "response": {"embedding": {"values": v}}})
             for k, v in enumerate(vectors)]
    return b"\n".join(lines) + b"\n", vectors


async def _truncate(pool: asyncpg.Pool) -> None:
    await pool.execute("TRUNCATE batchyard.embeddings")


async def baseline(pool: asyncpg.Pool, vectors: list[list[float]], dims: int) -> float:
    records = [(f"i{k}", "m", "b", dims, v) for k, v in enumerate(vectors)]
    start = time.perf_counter()
    async with pool.acquire() as conn:
        await conn.copy_records_to_table(
            "embeddings", schema_name="batchyard", records=records,
            columns=["item_id", "model", "batch_id", "dims", "embedding"])
    return len(vectors) / (time.perf_counter() - start)


async def ours(pool: asyncpg.Pool, data: bytes, n: int, dims: int) -> float:
    inp = Input(SubmitRequest(batch_id="b", items=[Item(f"i{k}", "t") for k in range(n)],
                              model="m", output_dimensionality=dims), [])
    inp = Input(inp.request, inp.request.items or [])
    app: Any = SimpleNamespace(store=Store(pool))
    start = time.perf_counter()
    ingest = Ingest(app, inp)
    for at in range(0, len(data), CHUNK):
        await ingest.feed(data[at:at + CHUNK])
    await ingest.finish()
    assert len(ingest.embedded) == n and not ingest.failures
    return n / (time.perf_counter() - start)


async def main(n: int = 10_000) -> dict[str, Any]:
    out: dict[str, Any] = {}
    async with postgres_server() as pg:
        conn = await asyncpg.connect(pg.url)
        await Migrator(conn).up()
        await conn.close()
        pool = await asyncpg.create_pool(pg.url, min_size=2, max_size=4)
        assert pool is not None
        for dims in (768, 3072):
            count = n if dims == 768 else n // 4
            data, vectors = results_file(count, dims)
            raw, mine = [], []
            for _ in range(3):
                await _truncate(pool)
                raw.append(await baseline(pool, vectors, dims))
                await _truncate(pool)
                mine.append(await ours(pool, data, count, dims))
            out[f"{dims}d"] = {"rows": count, "raw_copy_rows_per_s": round(max(raw)),
                               "ingest_rows_per_s": round(max(mine)),
                               "ratio": round(max(mine) / max(raw), 3)}
        await pool.close()
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return out


if __name__ == "__main__":
    import json

    print(json.dumps(asyncio.run(main()), indent=2))
