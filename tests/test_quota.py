"""A full Batch API makes batches wait, never fail: admission and the shared gate."""

from __future__ import annotations

import asyncio
import json

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
    await stack.emulator.set_faults(create_429_for_s=6)
    await stack.pipeline_pods(BATCHYARD_QUOTA_COOLDOWN="2s", BATCHYARD_QUOTA_COOLDOWN_MAX="4s")
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
