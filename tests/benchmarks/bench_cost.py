"""Cost and throughput: batchyard's own CPU seconds per 1,000 items at 768 dimensions
through submit + poll + ingest, with the emulator answering at once (servers excluded),
and batches and items per second with one and two pods per role.

CPU seconds move with the machine, so each run also measures the floor of the same work
(tests/benchmarks/floor.py: one job's answer read, checked, encoded and copied for each
batch that had a job, in this process, with no round trip but the COPY) and gives
batchyard's CPU as a ratio to it."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg
import nats

from consumers.ops import provision
from consumers.store.migrate import Migrator
from events import subjects
from events.payloads import Item, SubmitRequest
from events.publisher import publish
from sandbox.emulator.testing import launch_emulator
from sandbox.natsd import nats_server
from sandbox.pg import postgres_server
from tests.benchmarks import floor

KEY = "AIzaSyBenchmarkKey00000000000000000000"
BATCHES, ITEMS = 40, 250
WARMUP = 16  # batches through every pod before the count, published at once: a pod's
# first calls build its TLS context and lazily imported modules once in its life, and its
# pool opens a connection the first time that many run at once (BATCHYARD_CONCURRENCY
# is 8, and a step holds its claim's connection while it queries on another)
TICK = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of process `pid`."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / TICK, int(fields[12]) / TICK


async def _run(pods_per_role: int, round_: int) -> dict[str, Any]:
    async with nats_server() as natsd, postgres_server() as pg, \
            launch_emulator(keys=(KEY,), job_pending_s=0, job_running_s=0) as emu:
        nc = await nats.connect(natsd.url)
        js = nc.jetstream()
        await provision.apply(js)
        db = await asyncpg.connect(pg.url)
        await Migrator(db).up()
        env = {**os.environ, "NATS_URL": natsd.url, "DATABASE_URL": pg.url,
               "GEMINI_API_KEY": KEY, "GEMINI_BASE_URL": emu.url, "BATCHYARD_HTTP_PORT": "0",
               "BATCHYARD_POLL_INTERVAL": "200ms", "BATCHYARD_LOG_LEVEL": os.environ.get("BENCH_LOG", "warning"),
               # One job a batch, as in earlier releases, so that the CPU figure compares
               # with theirs; packing's own benchmark is bench_packing.
               "BATCHYARD_PACK_WAIT": "0"}
        pods, roles = [], []
        for _ in range(pods_per_role):
            for role in ("submit", "poll"):
                roles.append(role)
                prof = [os.environ["BENCH_PROFILE"], f"/tmp/bench-{role}.prof"] \
                    if os.environ.get("BENCH_PROFILE") else []
                pods.append(await asyncio.create_subprocess_exec(
                    sys.executable, *prof, "-m", "consumers", "run", role, env=env))
        await _round(js, db, f"w{round_}", WARMUP * pods_per_role, 0)
        if os.environ.get("BENCH_PROFILE"):
            for p in pods:
                p.send_signal(signal.SIGUSR1)  # the profiler starts counting now
        base = [_cpu_seconds(p.pid) for p in pods]
        start = time.perf_counter()
        await _round(js, db, f"r{round_}", BATCHES, WARMUP * pods_per_role)
        elapsed = time.perf_counter() - start
        spent = [(u - bu, s - bs) for (u, s), (bu, bs)
                 in zip((_cpu_seconds(p.pid) for p in pods), base, strict=True)]
        used = [u + s for u, s in spent]
        cpu = sum(used)
        stored = await db.fetchval("SELECT count(*) FROM batchyard.embeddings "
                                   "WHERE batch_id LIKE 'r%'")
        calls = (await emu.state())["calls"].get(KEY, {})
        for p in pods:
            p.terminate()
        for p in pods:
            await p.wait()
        # The floor, with the pods gone, on the same servers: one answer read, checked,
        # encoded and copied for each batch that had a job (the answer fetched untimed).
        jobs = await db.fetch("SELECT batch_id, job_name, model FROM batchyard.batches "
                              "WHERE batch_id LIKE $1 AND job_name IS NOT NULL "
                              "ORDER BY batch_id", f"r{round_}-%")
        answer = await floor.answer(emu.url, KEY, jobs[0]["job_name"])
        items_of = _items(f"r{round_}", int(jobs[0]["batch_id"].rpartition("-b")[2]))
        # The least of the rounds: other load on the machine only adds to a round's CPU,
        # so the least is the nearest to the work itself (and errs against batchyard).
        floor_cpu = min(await floor.measure(db, answer, jobs[0]["model"],
                                            [i.id for i in items_of],
                                            [i.text for i in items_of], 768, len(jobs)))
        await db.close()
        await nc.close()
    items = BATCHES * ITEMS
    assert stored == items, (stored, items)
    return {"pods_per_role": pods_per_role, "items": items, "seconds": round(elapsed, 2),
            "items_per_s": round(items / elapsed), "batches_per_s": round(BATCHES / elapsed, 2),
            "cpu_s_per_1000_items": round(cpu / items * 1000, 3),
            # System time is mostly loopback TCP: on one machine the sender's syscall
            # also does the receiving side's kernel work for PostgreSQL and NATS.
            "cpu_s_per_1000_items_user_sys": [round(sum(u for u, _ in spent) / items * 1000, 3),
                                              round(sum(s for _, s in spent) / items * 1000, 3)],
            "cpu_s_per_1000_items_by_role": {
                role: round(sum(u for r, u in zip(roles, used, strict=True) if r == role)
                            / items * 1000, 3) for role in ("submit", "poll")},
            "gemini_calls": calls,
            "batches_with_a_job": len(jobs),
            "floor_cpu_s_per_1k_items": round(floor_cpu / items * 1000, 4),
            "cpu_ratio_to_floor": round(cpu / floor_cpu, 2)}


async def _round(js: Any, db: asyncpg.Connection, tag: str, batches: int, before: int) -> None:
    """Publish `batches` batches and wait until they and the `before` earlier ones succeed."""
    for b in range(batches):
        req = SubmitRequest(batch_id=f"{tag}-b{b}", items=_items(tag, b),
                            output_dimensionality=768)
        await publish(js, subjects.SUBMIT, req, subjects.submit_id(req.batch_id, 0))
    deadline = time.monotonic() + 300
    while await db.fetchval("SELECT count(*) FROM batchyard.batches "
                            "WHERE status = 'succeeded'") < batches + before:
        if time.monotonic() > deadline:
            raise TimeoutError(f"round {tag} did not finish")
        await asyncio.sleep(0.1)


def _items(tag: str, b: int) -> list[Item]:
    # The tag is in the text: a counted batch shares no text with the warm-up (reuse
    # would copy its vectors instead of paying for them).
    return [Item(f"{tag}-b{b}-{i}", f"def function_{i}(x):\n    return x * {i}  # {tag} {b}")
            for i in range(ITEMS)]


async def main() -> dict[str, Any]:
    tempfile.tempdir = None
    if os.environ.get("BENCH_PROFILE"):
        return {"runs": [await _run(1, 1)]}
    return {"runs": [await _run(1, 1), await _run(2, 2)]}


if __name__ == "__main__":
    import json

    print(json.dumps(asyncio.run(main()), indent=2))
