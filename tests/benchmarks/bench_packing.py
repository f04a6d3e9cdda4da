"""Packing (CONTRACT §12): how much of the Batch API's quota a stream of small batches
uses, with packing and without, side by side.

600 batches of 20 texts (about 2,000 tokens each) against a quota of 2 active jobs of at
most 40,000 tokens, each job taking JOB_S seconds: the most the quota carries is
2 x 40,000 / JOB_S tokens a second. Utilisation is the tokens of finished jobs per second
over that. Without packing each batch is its own job; that run is cut after WINDOW_S.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg
import nats

from consumers.ops import provision
from consumers.store.migrate import Migrator
from events import jetstream as defs
from events import subjects
from events.payloads import Item, SubmitRequest
from events.publisher import publish
from sandbox.emulator.testing import launch_emulator
from sandbox.natsd import nats_server
from sandbox.pg import postgres_server

KEY = "AIzaSyBenchmarkKey00000000000000000000"
BATCHES, TEXTS = 600, 20
JOBS, JOB_TOKENS, PENDING_S, RUNNING_S = 2, 40_000, 0.5, 2.5
JOB_S = PENDING_S + RUNNING_S
WINDOW_S = 30.0  # the unpacked run is cut here: at one batch a job it would take 15 min


def _batches() -> list[SubmitRequest]:
    body = "    total = total + values[i] * weights[i]  # accumulate\n" * 7
    return [SubmitRequest(batch_id=f"b{b}", output_dimensionality=768, items=[
        Item(f"b{b}-{i}", f"def f_{b}_{i}(values, weights):\n{body}    return {i}")
        for i in range(TEXTS)]) for b in range(BATCHES)]


async def _run(pack_wait: str, cut: float | None) -> dict[str, Any]:
    async with nats_server() as natsd, postgres_server() as pg, \
            launch_emulator(keys=(KEY,), job_pending_s=PENDING_S,
                            job_running_s=RUNNING_S) as emu:
        await emu.set_faults(max_active_jobs=JOBS, max_job_tokens=JOB_TOKENS,
                             job_pending_s=PENDING_S, job_running_s=RUNNING_S)
        nc = await nats.connect(natsd.url)
        js = nc.jetstream()
        await provision.apply(js)
        db = await asyncpg.connect(pg.url)
        await Migrator(db).up()
        env = {**os.environ, "NATS_URL": natsd.url, "DATABASE_URL": pg.url,
               "GEMINI_API_KEY": KEY, "GEMINI_BASE_URL": emu.url, "BATCHYARD_HTTP_PORT": "0",
               "BATCHYARD_POLL_INTERVAL": "200ms", "BATCHYARD_LOG_LEVEL": "warning",
               "BATCHYARD_MAX_ACTIVE_JOBS": str(JOBS),
               "BATCHYARD_MAX_JOB_TOKENS": str(JOB_TOKENS), "BATCHYARD_PACK_WAIT": pack_wait,
               "BATCHYARD_QUOTA_COOLDOWN": "1s"}
        logs = os.environ.get("BENCH_LOGS")  # a folder for the pods' logs, to study a run
        if logs:
            env["BATCHYARD_LOG_LEVEL"] = "info"
        pods = [await asyncio.create_subprocess_exec(
            sys.executable, "-m", "consumers", "run", role, env=env,
            stderr=open(f"{logs}/{role}{n}.log", "wb") if logs else None)
            for n, role in enumerate(("submit", "submit", "poll", "poll"))]
        await _bound(js, 2)
        reqs = _batches()
        start = time.monotonic()
        for req in reqs:
            await publish(js, subjects.SUBMIT, req, subjects.submit_id(req.batch_id, 0))
        deadline = start + (cut or 600.0)
        while time.monotonic() < deadline:
            if await db.fetchval("SELECT count(*) FROM batchyard.batches"
                                 " WHERE status = 'succeeded'") == BATCHES:
                break
            await asyncio.sleep(0.2)
        elapsed = time.monotonic() - start
        state = await emu.state()
        if logs:
            Path(f"{logs}/emulator-state.json").write_text(json.dumps(state))
        done = [j for j in state["jobs"] if j["state"] == "BATCH_STATE_SUCCEEDED"]
        finished = await db.fetchval("SELECT count(*) FROM batchyard.batches"
                                     " WHERE status = 'succeeded'")
        for p in pods:
            p.terminate()
        for p in pods:
            await p.wait()
        await db.close()
        await nc.close()
    tokens = sum(j["est_tokens"] for j in done)
    _, idle = _idle(done)
    most = JOBS * JOB_TOKENS / JOB_S
    return {"pack_wait": pack_wait, "seconds": round(elapsed, 1), "batches_finished": finished,
            "jobs": len(done), "tokens_embedded": tokens,
            "tokens_per_s": round(tokens / elapsed), "quota_tokens_per_s": round(most),
            "utilisation": round(tokens / elapsed / most, 3),
            "slot_idle_s": round(idle, 1)}


async def _bound(js: Any, pods: int) -> None:
    """Wait until `pods` pods of each role are pulling (a pod's start is not quota time)."""
    for _ in range(600):
        infos = [await js.consumer_info(c.stream, c.name) for c in (defs.SUBMIT, defs.POLL)]
        if all((i.num_waiting or 0) >= pods for i in infos):
            return
        await asyncio.sleep(0.1)
    raise TimeoutError("the pods did not start pulling within 60 s")


def _idle(jobs: list[dict[str, Any]]) -> tuple[float, float]:
    """When the first job was created, and the slot-seconds left free between then and
    the last job's end (where the quota's share is lost to turnaround)."""
    edges = sorted([(j["created"], 1) for j in jobs] + [(j["ended"], -1) for j in jobs])
    idle, active, at = 0.0, 0, edges[0][0]
    for t, step in edges:
        idle += (JOBS - active) * (t - at)
        active, at = active + step, t
    return edges[0][0], idle


async def main() -> dict[str, Any]:
    packed = await _run("2s", None)
    alone = await _run("0", WINDOW_S)
    return {"packed": packed, "unpacked": alone,
            "ratio": round(packed["utilisation"] / max(alone["utilisation"], 1e-9), 1)}


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main()), indent=2))
