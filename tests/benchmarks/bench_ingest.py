"""Result ingestion (read, parse, validate, upsert) vs raw copy_records_to_table, and the
peak RSS of ingesting a 10k and a 100k item results file, each in a fresh process."""

from __future__ import annotations

import asyncio
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import asyncpg
import msgspec

from consumers.batch.inputs import Input
from consumers.batch.results import Ingest
from consumers.store.batches import Store
from consumers.store.migrate import Migrator
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


_SETTINGS = SimpleNamespace(normalize=True)  # what Ingest reads of Settings


async def ours(pool: asyncpg.Pool, data: bytes, n: int, dims: int) -> float:
    inp = Input(SubmitRequest(batch_id="b", items=[Item(f"i{k}", "t") for k in range(n)],
                              model="m", output_dimensionality=dims), [])
    inp = Input(inp.request, inp.request.items or [])
    app: Any = SimpleNamespace(store=Store(pool), settings=_SETTINGS)
    start = time.perf_counter()
    ingest = Ingest(app, inp)
    for at in range(0, len(data), CHUNK):
        await ingest.feed(data[at:at + CHUNK])
    await ingest.finish()
    assert ingest.embedded == n and not ingest.failures
    return n / (time.perf_counter() - start)


def write_results_file(path: Path, n: int, dims: int) -> None:
    """A results file of `n` lines, written line by line (100 distinct vectors reused)."""
    rng = random.Random(7)
    vectors = [msgspec.json.encode([rng.uniform(-1, 1) for _ in range(dims)])
               for _ in range(100)]
    with path.open("wb") as f:
        for k in range(n):
            f.write(b'{"key":"i%d","response":{"embedding":{"values":%s}}}\n'
                    % (k, vectors[k % 100]))


def _status_kb(field: str) -> int:
    """A field of /proc/self/status in kB: VmHWM is this process's peak RSS (ru_maxrss
    would not do: Linux carries it over exec from the parent that forked the process)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise LookupError(field)


async def _ingest_file(db_url: str, path: Path, n: int, dims: int) -> dict[str, int]:
    """In this process: ingest `path` as a results file arrives, chunk by chunk."""
    pool = await asyncpg.create_pool(db_url, min_size=1, max_size=2)
    assert pool is not None
    inp = Input(SubmitRequest(batch_id="b", items=[Item(f"i{k}", "t") for k in range(n)],
                              model="m", output_dimensionality=dims), [])
    inp = Input(inp.request, inp.request.items or [])
    before = _status_kb("VmRSS")
    ingest = Ingest(SimpleNamespace(store=Store(pool), settings=_SETTINGS), inp)  # type: ignore[arg-type]
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            await ingest.feed(chunk)
    await ingest.finish()
    assert ingest.embedded == n and not ingest.failures
    await pool.close()
    peak = _status_kb("VmHWM")
    return {"rss_before_ingest_kb": before, "peak_rss_kb": peak}


async def peak_rss(db_url: str, sizes: tuple[int, ...] = (10_000, 100_000),
                   dims: int = 768) -> dict[str, Any]:
    """Peak RSS of ingesting each size in a fresh process (the parent's memory apart)."""
    out: dict[str, Any] = {"dims": dims}
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            path = Path(tmp) / f"results-{n}.jsonl"
            write_results_file(path, n, dims)
            conn = await asyncpg.connect(db_url)
            await conn.execute("TRUNCATE batchyard.embeddings")
            await conn.close()
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "tests.benchmarks.bench_ingest", "--rss", db_url,
                str(path), str(n), str(dims), stdout=asyncio.subprocess.PIPE)
            data, _ = await proc.communicate()
            assert proc.returncode == 0, proc.returncode
            got = msgspec.json.decode(data)
            out[f"{n}"] = {"file_mb": round(path.stat().st_size / 1e6),
                           "peak_rss_mb": round(got["peak_rss_kb"] / 1024, 1),
                           "rss_before_ingest_mb": round(got["rss_before_ingest_kb"] / 1024, 1)}
            os.unlink(path)
    small, large = (out[f"{n}"]["peak_rss_mb"] for n in (sizes[0], sizes[-1]))
    out["ratio_large_to_small"] = round(large / small, 3)
    return out


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
        out["peak_rss"] = await peak_rss(pg.url)
    return out


if __name__ == "__main__":
    import json

    if sys.argv[1:2] == ["--rss"]:
        url, file, count, dims = sys.argv[2:6]
        print(json.dumps(asyncio.run(_ingest_file(url, Path(file), int(count), int(dims)))))
    else:
        print(json.dumps(asyncio.run(main()), indent=2))
