"""Online path, fallback, result validation, stuck jobs and operator re-drives."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable
from typing import Any

import aiohttp
from nats.aio.client import Client as NATS

from events import jetstream as defs
from events import subjects
from events.payloads import Completed, Dead, decode
from tests.harness import Stack, batch, stream_messages, submit, wait_finished, wait_for


async def _cli(stack: Stack, *args: str) -> str:
    code, out = await stack.cli(*args)
    assert code == 0, out
    return out


async def _jobs(stack: Stack) -> list[dict]:
    return (await stack.emulator.state())["jobs"]


async def test_small_batches_go_online_large_ones_through_jobs(stack: Stack) -> None:
    """Batches of at most the threshold are embedded online in seconds; larger make jobs."""
    await stack.emulator.set_faults(job_pending_s=30)  # jobs are slow, online is not
    await stack.pod("submit", "poll")
    nc = await stack.nc()
    for n in range(5):
        await submit(nc, batch(f"small{n}", 1 + n))
    await submit(nc, batch("large", 40))
    await wait_finished(stack, 5, timeout=20)
    db = await stack.db()
    rows = await db.fetch("SELECT batch_id, status, embed_path FROM batchyard.batches "
                          "ORDER BY batch_id")
    assert [(r["batch_id"], r["status"], r["embed_path"]) for r in rows] == [
        ("large", "submitted", None)] + [(f"small{n}", "succeeded", "online") for n in range(5)]
    assert [j["display_name"] for j in await _jobs(stack)] == ["large:0"]
    calls = (await stack.emulator.state())["calls"][stack.key]
    assert calls.get("models.batchEmbedContents") == 5
    await stack.emulator.advance(60)
    assert await wait_finished(stack, 6, timeout=30) == {"succeeded": 6}
    assert await db.fetchval("SELECT embed_path FROM batchyard.batches "
                             "WHERE batch_id = 'large'") == "batch"
    await db.close()
    await nc.close()


async def test_failing_batch_api_falls_back_to_online(stack: Stack) -> None:
    """Two FAILED jobs, then the batch is embedded online and completes."""
    await stack.emulator.set_faults(job_outcome="failed")
    await stack.pod("submit", "poll", BATCHYARD_MAX_ITEM_ATTEMPTS="5")
    nc = await stack.nc()
    await submit(nc, batch("fallback", 30))
    assert await wait_finished(stack, 1, timeout=60) == {"succeeded": 1}
    db = await stack.db()
    row = await db.fetchrow("SELECT * FROM batchyard.batches")
    assert row["embed_path"] == "online" and row["job_failures"] == 2 and row["attempt"] == 2
    assert await db.fetchval("SELECT count(*) FROM batchyard.embeddings") == 30
    assert sorted(j["display_name"] for j in await _jobs(stack)) == ["fallback:0", "fallback:1"]
    await db.close()
    await nc.close()


async def test_without_fallback_failed_jobs_end_failed_and_dead(stack: Stack) -> None:
    """With the fallback off, a batch the Batch API always fails ends failed and dead."""
    await stack.emulator.set_faults(job_outcome="failed")
    await stack.pod("submit", "poll", BATCHYARD_FALLBACK_TO_ONLINE="false")
    nc = await stack.nc()
    await submit(nc, batch("hopeless", 30))
    assert await wait_finished(stack, 1, timeout=60) == {"failed": 1}
    dead = [decode(m, Dead) for m in await stream_messages(nc, subjects.DEAD)]
    assert [(d.reason, len(d.items or [])) for d in dead] == [("job_failed", 30)]
    assert len(await _jobs(stack)) == 3
    await nc.close()


async def test_a_whole_job_failure_counts_once_through_a_crash(stack: Stack) -> None:
    """A poll pod killed after announcing the next attempt but before moving the row on:
    the attempt is settled again by a peer, and its job failure is counted once."""
    nc = await stack.nc()
    await nc.jetstream().add_consumer(defs.BATCH, defs.POLL.config.evolve(ack_wait=3.0))
    await stack.emulator.set_faults(job_outcome="failed")
    env = {"BATCHYARD_FALLBACK_TO_ONLINE": "false"}
    doomed = await stack.pod("poll", BATCHYARD_FAILPOINTS="finish.before_row", **env)
    await stack.pod("submit", **env)
    await submit(nc, batch("twice", 30))
    assert await asyncio.wait_for(doomed.proc.wait(), 60) == -9
    await stack.pod("poll", **env)
    assert await wait_finished(stack, 1, timeout=90) == {"failed": 1}
    db = await stack.db()
    row = await db.fetchrow("SELECT * FROM batchyard.batches")
    assert row["job_failures"] == 3 and row["attempt"] == 2
    await db.close()
    await nc.close()


async def test_a_redriven_batch_is_announced_again(stack: Stack) -> None:
    """batch.completed carries the attempt, and its Nats-Msg-Id too: a batch re-submitted
    by an operator inside the duplicate window is announced for its new attempt."""
    await stack.pod("submit", "poll")
    nc = await stack.nc()
    await submit(nc, batch("again", 30))
    assert await wait_finished(stack, 1, timeout=60) == {"succeeded": 1}
    await _cli(stack, "batches", "resubmit", "again")
    await wait_for(lambda: _completed_attempts(nc), 60, what="second announcement")
    assert await _completed_attempts(nc) == [0, 1]
    await nc.close()


async def _completed_attempts(nc: NATS) -> list[int] | None:
    done = [decode(m, Completed) for m in await stream_messages(nc, subjects.COMPLETED)]
    attempts = [d.attempt for d in done if d.batch_id == "again"]
    return attempts if len(attempts) >= 2 else None


async def test_bad_vectors_are_rejected_and_retried(stack: Stack) -> None:
    """NaN, zero or wrong-length vectors are never stored; those items are retried."""
    for kind in ("nan", "zeros", "wrong_length"):
        await stack.emulator.set_faults(bad_vector=kind, bad_vector_rate=0.4, seed=5)
        bid = f"bad-{kind}"
        if not stack.pods:
            await stack.pod("submit", "poll")
        nc = await stack.nc()
        await submit(nc, batch(bid, 60, output_dimensionality=16))
        await nc.close()
        db = await stack.db()
        await wait_for(lambda b=bid, c=db: c.fetchval(
            "SELECT status IN ('succeeded', 'partial') FROM batchyard.batches "
            "WHERE batch_id = $1", b), 60, what=f"{bid} finished")
        row = await db.fetchrow("SELECT * FROM batchyard.batches WHERE batch_id = $1", bid)
        assert row["attempt"] >= 1 and row["items_embedded"] + row["items_failed"] == 60
        vectors = await db.fetch("SELECT embedding FROM batchyard.embeddings "
                                 "WHERE batch_id = $1", bid)
        assert len(vectors) == row["items_embedded"]
        for (v,) in vectors:
            assert len(v) == 16 and all(math.isfinite(x) for x in v) and any(v)
        await db.close()


async def test_stuck_job_is_cancelled_and_resubmitted(stack: Stack) -> None:
    """A job unfinished after BATCHYARD_MAX_WAIT is cancelled; the next attempt succeeds."""
    await stack.emulator.set_faults(job_outcome="never")
    submitter = await stack.pod("submit")
    nc = await stack.nc()
    await submit(nc, batch("stuck", 30))
    await wait_for(lambda: _n_jobs(stack, 1), 30)
    assert await submitter.terminate() == 0
    await stack.emulator.set_faults()
    await stack.pod("submit", "poll", BATCHYARD_MAX_WAIT="3s")
    assert await wait_finished(stack, 1, timeout=60) == {"succeeded": 1}
    jobs = sorted((j["display_name"], j["state"]) for j in await _jobs(stack))
    assert jobs == [("stuck:0", "BATCH_STATE_CANCELLED"), ("stuck:1", "BATCH_STATE_SUCCEEDED")]
    await nc.close()


async def _is(value: Awaitable[Any], expected: Any) -> bool:
    return await value == expected


async def _n_jobs(stack: Stack, n: int) -> bool:
    return len(await _jobs(stack)) >= n


async def test_redrive_commands_twice_at_once_act_once(stack: Stack) -> None:
    """resubmit, retry-failed and cancel, each run twice concurrently, do their work once."""
    await stack.emulator.set_faults(item_error_rate=0.5, seed=2)
    await stack.pod("submit", "poll", BATCHYARD_MAX_ITEM_ATTEMPTS="1")
    nc = await stack.nc()
    await submit(nc, batch("again", 30))
    await submit(nc, batch("retry", 30))
    assert await wait_finished(stack, 2) == {"partial": 2}
    await stack.emulator.set_faults()
    outs = await asyncio.gather(_cli(stack, "batches", "resubmit", "again"),
                                _cli(stack, "batches", "resubmit", "again"))
    assert sum("re-submitted: batch again as attempt 1 with 30 items" in o for o in outs) == 1, outs
    outs = await asyncio.gather(_cli(stack, "batches", "retry-failed", "retry"),
                                _cli(stack, "batches", "retry-failed", "retry"))
    assert sum("retried: batch retry as attempt 1" in o for o in outs) == 1, outs
    assert await wait_finished(stack, 2) == {"succeeded": 2}
    names = sorted(j["display_name"] for j in await _jobs(stack))
    assert names == ["again:0", "again:1", "retry:0", "retry:1"]
    retry_job = next(j for j in await _jobs(stack) if j["display_name"] == "retry:1")
    assert 0 < retry_job["request_count"] < 30
    await stack.emulator.set_faults(job_pending_s=300)
    await submit(nc, batch("halt", 30))
    db = await stack.db()
    await wait_for(lambda: db.fetchval(
        "SELECT status = 'submitted' FROM batchyard.batches WHERE batch_id = 'halt'"), 30)
    outs = await asyncio.gather(_cli(stack, "batches", "cancel", "halt"),
                                _cli(stack, "batches", "cancel", "halt"))
    assert sum(o.startswith("cancelled batch halt") for o in outs) == 1, outs

    async def halt_state() -> str:
        return next(j["state"] for j in await _jobs(stack) if j["display_name"] == "halt:0")

    # The API shows a cancel in progress before the job is cancelled.
    assert await halt_state() in ("BATCH_STATE_CANCELLING", "BATCH_STATE_CANCELLED")
    await wait_for(lambda: _is(halt_state(), "BATCH_STATE_CANCELLED"), 30)
    assert await db.fetchval("SELECT status FROM batchyard.batches "
                             "WHERE batch_id = 'halt'") == "cancelled"
    # Its admission slot is given back: a cancelled job no longer counts as active.
    assert await db.fetchval("SELECT state FROM batchyard.jobs "
                             "WHERE batch_id = 'halt'") == "cancelled"
    await db.close()
    await nc.close()


async def test_a_dead_letter_leaves_a_later_attempt_alone(stack: Stack) -> None:
    """A poll of attempt 0 that dead-letters (its job deleted through the API) while the
    row has moved on to attempt 1 marks nothing dead: the reject is guarded by attempt."""
    await stack.emulator.set_faults(job_pending_s=600)
    await stack.pod("submit", "poll", BATCHYARD_POLL_INTERVAL="1s")
    nc = await stack.nc()
    db = await stack.db()
    await submit(nc, batch("moved", 30))
    job = await wait_for(lambda: db.fetchval(
        "SELECT job_name FROM batchyard.batches WHERE status = 'submitted'"), 30)
    # Every call now takes 2 s: the row moves on while the poll's get_job is under way.
    await stack.emulator.set_faults(job_pending_s=600, latency_ms=2000)
    async with aiohttp.ClientSession() as http:
        url = f"{stack.emulator.url}/v1beta/{job}?key={stack.key}"
        async with http.delete(url) as resp:
            assert resp.status == 200, await resp.text()
    await db.execute("UPDATE batchyard.batches SET attempt = 1 WHERE batch_id = 'moved'")
    dead = await wait_for(lambda: stream_messages(nc, subjects.DEAD), 30, what="dead letter")
    assert decode(dead[0], Dead).reason == "permanent_error"
    row = await db.fetchrow("SELECT * FROM batchyard.batches WHERE batch_id = 'moved'")
    assert (row["attempt"], row["status"]) == (1, "submitted")
    await db.close()
    await nc.close()
