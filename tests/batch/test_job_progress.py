"""A running job's progress: read from the raw Operation's batchStats (the SDK drops them),
kept on its jobs row, shown by `batches show` and `status`, counted in a metric."""

from __future__ import annotations

import json
from typing import Any

import aiohttp

from sandbox._proc import free_port
from tests.harness import Stack, batch, submit, wait_finished, wait_for

ITEMS = 60


async def _json(stack: Stack, *args: str) -> Any:
    code, out = await stack.cli(*args, "--json")
    assert code == 0, out
    return json.loads(out)


async def _metric(port: int, name: str) -> float:
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/metrics") as r:
        text = await r.text()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + " "))


async def test_running_job_progress_is_shown_and_counted(stack: Stack) -> None:
    await stack.emulator.set_faults(job_pending_s=0, job_running_s=1000)
    port = free_port()
    await stack.pod("submit", "poll", BATCHYARD_HTTP_PORT=str(port))
    nc = await stack.nc()
    db = await stack.db()
    await submit(nc, batch("slow", ITEMS))

    async def polled() -> Any:
        return await db.fetchrow(
            "SELECT * FROM batchyard.jobs WHERE batch_id = 'slow' AND polled_at IS NOT NULL")

    row = await wait_for(polled, 60, what="a poll of the running job")
    assert row["state"] == "running" and row["requests_succeeded"] < ITEMS // 2
    await stack.emulator.advance(400)  # 40% of the job's running time

    async def partway() -> Any:
        r = await polled()
        return r if r and 0 < r["requests_succeeded"] < ITEMS else None

    row = await wait_for(partway, 60, what="the job's counts rising")
    done = row["requests_succeeded"] + row["requests_failed"]
    shown = await _json(stack, "batches", "show", "slow")
    job = shown["jobs"][0]
    assert job["state"] == "running" and job["requests_succeeded"] >= done
    assert job["progress"].endswith(f"/ {ITEMS} ({100 * job['requests_succeeded'] // ITEMS}%)")
    quota = (await _json(stack, "status"))["quota"]
    assert quota["requests"] == ITEMS and done <= quota["requests_done"] < ITEMS
    assert await _metric(port, "batchyard_job_requests_done_total") >= done

    await stack.emulator.advance(1000)
    assert await wait_finished(stack, 1) == {"succeeded": 1}
    assert await db.fetchval("SELECT count(*) FROM batchyard.embeddings"
                             " WHERE batch_id = 'slow'") == ITEMS
    shown = await _json(stack, "batches", "show", "slow")
    assert shown["jobs"][0]["state"] == "succeeded" and shown["jobs"][0]["progress"] is None
    await db.close()
    await nc.close()


def test_batch_stats_are_read_from_the_raw_operation() -> None:
    """int64 counts arrive as strings; an absent count is 0; a bogus one is not trusted."""
    from consumers.gemini.jobs import Progress, _raw_job

    def job(stats: Any) -> Any:
        meta = {"state": "BATCH_STATE_RUNNING", "batchStats": stats}
        return _raw_job(json.dumps({"name": "batches/x", "metadata": meta}), "batches/x")

    assert job({"requestCount": "10", "successfulRequestCount": "4",
                "pendingRequestCount": "6"}).progress == Progress(10, 4, 0)
    assert job({"requestCount": "10", "failedRequestCount": "-1",
                "successfulRequestCount": "²"}).progress == Progress(10, 0, 0)
    assert _raw_job(json.dumps({"name": "batches/x", "metadata": {}}), "x").progress is None
    cancelling = {"name": "batches/x", "metadata": {"state": "BATCH_STATE_CANCELLING"}}
    assert _raw_job(json.dumps(cancelling), "x").state == "running"
