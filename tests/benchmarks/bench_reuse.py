"""Reuse (CONTRACT §13): 100,000 items of which 95% have a stored vector, looked up by
text hash and copied, against raw `copy_records_to_table` of the same rows; and the CPU
per 1,000 items (ours and the PostgreSQL backend's) of reusing them against ingesting
their vectors from a results file, as a paid job would."""

from __future__ import annotations

import random
import time
from types import SimpleNamespace
from typing import Any

import asyncpg
import msgspec

from consumers.batch import reuse
from consumers.batch.inputs import Input
from consumers.batch.results import Ingest
from consumers.store.batches import Store
from consumers.store.migrate import Migrator
from events.payloads import Item, SubmitRequest
from sandbox.pg import postgres_server
from tests.benchmarks.bench_cost import _cpu_seconds

N, STORED, DIMS, MODEL = 100_000, 95_000, 768, "gemini-embedding-001"
CHUNK = 1024 * 1024


def _texts(n: int) -> list[str]:
    # About the size of an indexer's chunk: a few hundred bytes of code.
    body = "    x = compute(a, b)  # step\n" * 12
    return [f"def f{i}(a, b):\n{body}    return {i}\n" for i in range(n)]


def _request(batch_id: str, prefix: str, texts: list[str]) -> SubmitRequest:
    return SubmitRequest(batch_id=batch_id, model=MODEL, output_dimensionality=DIMS,
                         items=[Item(f"{prefix}{k}", t) for k, t in enumerate(texts)])


def _vectors(n: int) -> list[list[float]]:
    rng = random.Random(3)
    base = [[rng.uniform(-1, 1) for _ in range(DIMS)] for _ in range(100)]
    return [base[k % 100] for k in range(n)]


class _Cpu:
    """CPU seconds of this process and of one PostgreSQL backend over a block."""

    def __init__(self, backend: int):
        self.backend = backend

    def __enter__(self) -> _Cpu:
        self.ours = time.process_time()
        self.server = sum(_cpu_seconds(self.backend))
        self.wall = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.ours = time.process_time() - self.ours
        self.server = sum(_cpu_seconds(self.backend)) - self.server
        self.wall = time.perf_counter() - self.wall


async def _seed(pool: asyncpg.Pool, texts: list[str], vectors: list[list[float]]) -> None:
    """The stored rows: ingested as a paid job would write them, hashes included."""
    await pool.execute("TRUNCATE batchyard.embeddings")
    app: Any = SimpleNamespace(store=Store(pool), settings=SimpleNamespace(normalize=True))
    req = _request("old", "old-", texts)
    ingest = Ingest(app, Input(req, req.items or []))
    lines = b"".join(msgspec.json.encode({"key": f"old-{k}", "response": {"embedding": {
        "values": v}}}) + b"\n" for k, v in enumerate(vectors))
    for at in range(0, len(lines), CHUNK):
        await ingest.feed(lines[at:at + CHUNK])
    await ingest.finish()
    assert ingest.embedded == len(texts)


async def _reuse_once(pool: asyncpg.Pool, backend: int, texts: list[str]) -> _Cpu:
    store = Store(pool)
    await pool.execute("DELETE FROM batchyard.embeddings WHERE batch_id = 'new'")
    await pool.execute("DELETE FROM batchyard.batches WHERE batch_id = 'new'")
    row = await store.create_or_get("new", MODEL, len(texts), 0, None)
    app: Any = SimpleNamespace(store=store, settings=SimpleNamespace(reuse_embeddings=True))
    req = _request("new", "new-", texts)
    with _Cpu(backend) as cpu:
        sent, copied = await reuse.resolve(app, Input(req, req.items or []), row)
    assert copied == STORED and len(sent.items) == N - STORED, (copied, len(sent.items))
    return cpu


async def _raw_copy(pool: asyncpg.Pool, backend: int, vectors: list[list[float]]) -> _Cpu:
    await pool.execute("DELETE FROM batchyard.embeddings WHERE batch_id = 'raw'")
    records = [(f"raw-{k}", MODEL, "raw", DIMS, v) for k, v in enumerate(vectors)]
    with _Cpu(backend) as cpu:
        async with pool.acquire() as conn:
            await conn.copy_records_to_table(
                "embeddings", schema_name="batchyard", records=records,
                columns=["item_id", "model", "batch_id", "dims", "embedding"])
    return cpu


async def _ingest_once(pool: asyncpg.Pool, backend: int, texts: list[str],
                       vectors: list[list[float]]) -> _Cpu:
    """What embedding the same items costs us once the API has answered."""
    await pool.execute("DELETE FROM batchyard.embeddings WHERE batch_id = 'paid'")
    app: Any = SimpleNamespace(store=Store(pool), settings=SimpleNamespace(normalize=True))
    req = _request("paid", "paid-", texts)
    lines = b"".join(msgspec.json.encode({"key": f"paid-{k}", "response": {"embedding": {
        "values": v}}}) + b"\n" for k, v in enumerate(vectors))
    with _Cpu(backend) as cpu:
        inp = Input(req, req.items or [])
        inp.text_shas  # noqa: B018 - hashed on the paid path too, in the same pass
        ingest = Ingest(app, inp)
        for at in range(0, len(lines), CHUNK):
            await ingest.feed(lines[at:at + CHUNK])
        await ingest.finish()
    assert ingest.embedded == len(texts)
    return cpu


async def main() -> dict[str, Any]:
    texts = _texts(N)
    vectors = _vectors(STORED)
    async with postgres_server() as pg:
        conn = await asyncpg.connect(pg.url)
        await Migrator(conn).up()
        await conn.close()
        # One connection, so that its backend's CPU is the server's share of the work.
        pool = await asyncpg.create_pool(pg.url, min_size=1, max_size=1)
        assert pool is not None
        backend = int(await pool.fetchval("SELECT pg_backend_pid()"))
        await _seed(pool, texts[:STORED], vectors)
        reused, raw, paid = [], [], []
        for _ in range(3):
            reused.append(await _reuse_once(pool, backend, texts))
            raw.append(await _raw_copy(pool, backend, vectors))
            paid.append(await _ingest_once(pool, backend, texts[:STORED], vectors))
        await pool.close()

    def best(runs: list[_Cpu]) -> _Cpu:
        return min(runs, key=lambda c: c.wall)

    r, c, p = best(reused), best(raw), best(paid)
    per_k = 1000 / STORED
    return {
        "items": N, "stored": STORED, "dims": DIMS,
        "reuse_rows_per_s": round(STORED / r.wall), "raw_copy_rows_per_s": round(STORED / c.wall),
        "ratio_reuse_to_raw_copy": round(c.wall / r.wall, 3),
        "resolve_s": round(r.wall, 3),
        "cpu_s_per_1000_reused": {"ours": round(r.ours * per_k, 5),
                                  "postgres": round(r.server * per_k, 5)},
        "cpu_s_per_1000_ingested": {"ours": round(p.ours * per_k, 5),
                                    "postgres": round(p.server * per_k, 5)},
        # Ours alone: what batchyard's own pods spend. With the backend: both write the
        # same rows, which is most of PostgreSQL's share.
        "cpu_ratio_reuse_to_ingest_ours": round(r.ours / p.ours, 3),
        "cpu_ratio_reuse_to_ingest": round((r.ours + r.server) / (p.ours + p.server), 3),
    }


if __name__ == "__main__":
    import asyncio
    import json

    print(json.dumps(asyncio.run(main()), indent=2))

