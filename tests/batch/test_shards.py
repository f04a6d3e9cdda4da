"""Batches too big for one job become shards; input files go once their job is over."""

from __future__ import annotations

import asyncio
import io
from collections import Counter

import msgspec
import pytest
from google import genai
from hypothesis import given, settings
from hypothesis import strategies as st
from nats.aio.client import Client as NATS

from consumers.batch.inputs import Input
from consumers.batch.shards import split
from consumers.batch.sweep import candidate, orphaned
from events import jetstream as defs
from events import subjects
from events.payloads import Completed, Item, SubmitRequest, decode, encode_items_jsonl
from tests.conftest import KEY
from tests.harness import Stack, statuses, stream_messages, submit, wait_finished, wait_for

NEW_KEY = "AIzaSyBatchyardTestKeyRotated0000000002"
FINISHED_JOB = ("BATCH_STATE_SUCCEEDED", "BATCH_STATE_FAILED", "BATCH_STATE_CANCELLED",
                "BATCH_STATE_EXPIRED")


def _big(batch_id: str, n: int, size: int) -> SubmitRequest:
    items = [Item(f"{batch_id}-{i}", f"{i:06d} " + "y" * size) for i in range(n)]
    return SubmitRequest(batch_id=batch_id, items=items, output_dimensionality=8)


async def _submit_via_object(nc: NATS, req: SubmitRequest) -> None:
    """Items over max_payload go in BATCH_INPUTS, as `batchyard publish` puts them."""
    store = await nc.jetstream().object_store(defs.BATCH_INPUTS)
    name = f"input/{req.batch_id}.jsonl"
    await store.put(name, encode_items_jsonl(req.items or []))
    await submit(nc, msgspec.structs.replace(req, items=None, items_object=name))


def _stale_inputs(state: dict) -> list[str]:
    """Uploaded files whose job has finished (none may remain)."""
    over = {j["display_name"] for j in state["jobs"] if j["state"] in FINISHED_JOB}
    return [f["display_name"] for f in state["files"]
            if f["source"] == "upload" and f["display_name"] in over]


@pytest.mark.parametrize("failpoint", ["submit.after_create", "submit.between_shards"])
async def test_10000_items_in_shards_each_embedded_once_through_a_kill(
        stack: Stack, failpoint: str) -> None:
    """10,000 items over the per-job limit: several shards, one job each, even when a pod
    is killed -9 between two shard creations (before or after recording the first);
    one batch.completed."""
    limit = 300_000
    env = {"BATCHYARD_MAX_JOB_TOKENS": str(limit), "BATCHYARD_FILE_SWEEP_INTERVAL": "1s"}
    nc = await stack.nc()
    await nc.jetstream().add_consumer(defs.BATCH, defs.SUBMIT.config.evolve(ack_wait=3.0))
    doomed = await stack.pod("submit", BATCHYARD_FAILPOINTS=failpoint, **env)
    for _ in range(2):
        await stack.pod("poll", **env)
    await _submit_via_object(nc, _big("huge", 10_000, 400))
    assert await asyncio.wait_for(doomed.proc.wait(), 60) == -9
    for _ in range(2):
        await stack.pod("submit", **env)
    assert await wait_finished(stack, 1, timeout=240) == {"succeeded": 1}

    jobs = (await stack.emulator.state())["jobs"]
    names = Counter(j["display_name"] for j in jobs)
    assert len(names) >= 3 and set(names.values()) == {1}  # no shard created twice
    assert set(names) == {f"huge:0#{k}" for k in range(1, len(names) + 1)}
    assert sum(j["request_count"] for j in jobs) == 10_000
    assert all(j["est_tokens"] <= limit for j in jobs)
    assert ("job.adopted" in stack.logs()) == (failpoint == "submit.after_create")
    db = await stack.db()
    assert await db.fetchval("SELECT count(DISTINCT item_id) FROM batchyard.embeddings "
                             "WHERE batch_id = 'huge'") == 10_000
    assert await db.fetchval("SELECT count(*) FROM batchyard.embeddings") == 10_000
    row = await db.fetchrow("SELECT * FROM batchyard.batches")
    assert (row["items_embedded"], row["job_name"], row["input_file"]) == (10_000, None, None)
    shards = await db.fetch("SELECT shard, state, items FROM batchyard.jobs ORDER BY shard")
    assert [r["shard"] for r in shards] == list(range(1, len(names) + 1))
    assert {r["state"] for r in shards} == {"succeeded"}
    completed = [decode(m, Completed) for m in await stream_messages(nc, subjects.COMPLETED)]
    assert len(completed) == 1 and completed[0].items_embedded == 10_000
    assert completed[0].job_name == next(j["name"] for j in jobs
                                         if j["display_name"] == f"huge:0#{len(names)}")
    # The killed pod's upload is known to no row: the sweep finds it.
    await wait_for(lambda: _no_stale_inputs(stack), 30, what="input files of finished jobs gone")
    await db.close()
    await nc.close()


async def _no_stale_inputs(stack: Stack) -> bool:
    return not _stale_inputs(await stack.emulator.state())


async def test_shard_with_item_errors_retries_only_those(stack: Stack) -> None:
    """Per-item errors in shards: the next attempt carries just the failed items of all
    shards; the batch ends succeeded or partial with every item accounted for once."""
    await stack.emulator.set_faults(item_error_rate=0.05, seed=5)
    env = {"BATCHYARD_MAX_JOB_TOKENS": "10000"}
    await stack.pipeline_pods(**env)
    nc = await stack.nc()
    await submit(nc, _big("spots", 3000, 40))
    counts = await wait_finished(stack, 1, timeout=180)
    jobs = (await stack.emulator.state())["jobs"]
    first = [j for j in jobs if j["display_name"].startswith("spots:0#")]
    assert len(first) >= 3
    failed0 = sum(j["failed_requests"] for j in first)
    retried = sum(j["request_count"] for j in jobs if j["display_name"].startswith("spots:1"))
    assert 0 < failed0 == retried < 3000
    db = await stack.db()
    row = await db.fetchrow("SELECT * FROM batchyard.batches")
    embedded = await db.fetchval("SELECT count(*) FROM batchyard.embeddings")
    assert row["items_embedded"] == embedded and embedded + row["items_failed"] == 3000
    assert counts == {"succeeded" if row["items_failed"] == 0 else "partial": 1}
    assert len(await stream_messages(nc, subjects.COMPLETED)) == 1
    await db.close()
    await nc.close()


async def test_expiry_while_shards_run_parks_and_resumes_them(stack: Stack) -> None:
    """The key expires while shards run: each shard's poll parks; after rotation the same
    jobs finish and the batch completes once."""
    await stack.emulator.set_faults(job_pending_s=1, job_running_s=600)
    await stack.emulator.set_key(NEW_KEY, "valid")
    env = {"BATCHYARD_MAX_JOB_TOKENS": "5000"}
    for _ in range(2):
        await stack.pod("submit", "poll", **env)
        await stack.pod("recovery", "key-health", **env)
    nc = await stack.nc()
    await submit(nc, _big("tide", 600, 60))
    db = await stack.db()
    await wait_for(lambda: db.fetchval(
        "SELECT status = 'submitted' FROM batchyard.batches"), 60, what="all shards created")
    shards = await db.fetchval("SELECT count(*) FROM batchyard.jobs")
    assert shards >= 3
    await stack.emulator.set_key(KEY, "expired")
    await wait_for(lambda: _parked(stack, shards), 60, what="every shard's poll parked")
    assert await statuses(db) == {"auth_failed": 1}
    stack.key_file.write_text(NEW_KEY + "\n")
    await nc.jetstream().publish(subjects.KEY_ROTATED, b"")
    await wait_for(lambda: db.fetchval(
        "SELECT status = 'submitted' FROM batchyard.batches"), 60, what="polls replayed")
    await stack.emulator.advance(600)
    assert await wait_finished(stack, 1, timeout=120) == {"succeeded": 1}
    names = Counter(j["display_name"] for j in (await stack.emulator.state())["jobs"])
    assert len(names) == shards and set(names.values()) == {1}
    assert await db.fetchval("SELECT count(*) FROM batchyard.embeddings") == 600
    await wait_for(lambda: _parked_none(nc), 30, what="BATCH_PARKED empty")
    assert len(await stream_messages(nc, subjects.COMPLETED)) == 1
    await db.close()
    await nc.close()


async def _parked_none(nc: NATS) -> bool:
    return (await nc.jetstream().stream_info(defs.BATCH_PARKED)).state.messages == 0


async def _parked(stack: Stack, n: int) -> bool:
    nc = await stack.nc()
    try:
        return (await nc.jetstream().stream_info(defs.BATCH_PARKED)).state.messages >= n
    finally:
        await nc.close()


async def test_sweep_deletes_only_input_files_no_job_needs(stack: Stack) -> None:
    """Orphaned input files go; files of running jobs, live attempts and others stay."""
    client = genai.Client(api_key=KEY, http_options={"base_url": stack.emulator.url})

    async def upload(display_name: str) -> str:
        f = await client.aio.files.upload(
            file=io.BytesIO(b'{"key": "a", "request": {}}\n'),
            config={"mime_type": "application/jsonl", "display_name": display_name})
        return str(f.name)

    await stack.emulator.set_faults(job_pending_s=600)
    live = await upload("live:0")
    job = await client.aio.batches.create_embeddings(
        model="gemini-embedding-001", src={"file_name": live}, config={"display_name": "live:0"})
    db = await stack.db()
    await db.execute("""
        INSERT INTO batchyard.batches (batch_id, status, model, items_total, attempt)
        VALUES ('done', 'succeeded', 'm', 1, 0), ('live', 'submitted', 'm', 1, 0),
               ('moved', 'pending_submission', 'm', 1, 1), ('waiting', 'submitting', 'm', 1, 0)
    """)
    # The running row has a real job behind it: the sweep's reconcile asks the API.
    await db.execute("""
        INSERT INTO batchyard.jobs (batch_id, attempt, shard, display_name, state, items,
                                    est_tokens, job_name)
        VALUES ('done', 0, 2, 'done:0#2', 'succeeded', 1, 1, NULL),
               ('live', 0, 0, 'live:0', 'running', 1, 1, $1)
    """, job.name)
    gone = {await upload(n) for n in ("done:0#2", "moved:0", "nobody:3")}
    kept = {live} | {await upload(n) for n in ("waiting:0", "keep-me", "done", "done:0#x")}
    await stack.pod("poll", BATCHYARD_FILE_SWEEP_INTERVAL="1s")

    async def swept() -> bool:
        names = {f["name"] for f in (await stack.emulator.state())["files"]}
        return not (gone & names)

    await wait_for(swept, 30, what="orphans swept")
    await asyncio.sleep(2)  # another round or two: nothing else goes
    names = {f["name"] for f in (await stack.emulator.state())["files"]}
    assert kept <= names and not (gone & names)
    assert stack.logs().count('"file.swept"') == 3
    await db.close()


async def test_shards_failing_whole_go_round_then_online(stack: Stack) -> None:
    """Every shard's job fails: the attempt goes round whole, and after two whole
    failures the items are embedded online; each item once, one batch.completed."""
    await stack.emulator.set_faults(job_outcome="failed")
    env = {"BATCHYARD_MAX_JOB_TOKENS": "1000"}
    await stack.pipeline_pods(**env)
    nc = await stack.nc()
    await submit(nc, _big("storm", 300, 40))
    assert await wait_finished(stack, 1, timeout=180) == {"succeeded": 1}
    names = Counter(j["display_name"] for j in (await stack.emulator.state())["jobs"])
    per_attempt = Counter(n.split("#")[0] for n in names)
    assert set(names.values()) == {1} and set(per_attempt) == {"storm:0", "storm:1"}
    assert min(per_attempt.values()) >= 3
    db = await stack.db()
    row = await db.fetchrow("SELECT * FROM batchyard.batches")
    assert (row["attempt"], row["job_failures"], row["embed_path"]) == (2, 2, "online")
    assert await db.fetchval("SELECT count(DISTINCT item_id) FROM batchyard.embeddings") == 300
    assert len(await stream_messages(nc, subjects.COMPLETED)) == 1
    await db.close()
    await nc.close()


def test_split_is_the_fewest_contiguous_shards_under_the_limit() -> None:
    items = [Item(f"i{n}", "x" * 40) for n in range(25)]  # 10 tokens each
    parts = split(items, 100)
    assert [len(p) for p in parts] == [10, 10, 5]
    assert [i for p in parts for i in p] == items
    assert [len(p) for p in split(items, 100, taken=[7])] == [7, 10, 8]  # recorded sizes hold
    assert [len(p) for p in split([Item("big", "x" * 1000), *items[:3]], 100)] == [1, 3]
    assert split([], 100) == []


def test_sweep_candidates_are_only_our_job_names() -> None:
    assert candidate("files/a", "b:1:0#2") == ("files/a", "b:1", 0, 2)
    assert candidate("files/a", "b:7") == ("files/a", "b", 7, 0)
    for other in ("", "b", "b:x", "b:1#", "b:1#x", "b 1:0", "a" * 129 + ":0"):
        assert candidate("files/a", other) is None
    assert orphaned("succeeded", "submitted", 0, 0) and not orphaned("running", None, None, 0)
    assert orphaned(None, None, None, 0) and orphaned(None, "partial", 0, 0)
    assert orphaned(None, "submitting", 2, 1) and not orphaned(None, "submitting", 1, 1)


@settings(max_examples=200, deadline=None)
@given(texts=st.lists(st.text(min_size=1, max_size=200), min_size=1, max_size=20),
       task=st.sampled_from([None, "RETRIEVAL_DOCUMENT", "QUESTION_ANSWERING",
                             "TASK_TYPE_UNSPECIFIED"]),
       dims=st.sampled_from([None, 1, 768, 3072]))
def test_jsonl_size_bound_holds_for_any_text(texts: list[str], task: str | None,
                                             dims: int | None) -> None:
    """The bound that decides inline input without encoding it is never below the
    encoded size, whatever the texts hold (quotes, control characters, any Unicode)."""
    items = [Item(f"item-{'x' * (i % 100)}.{i}", t) for i, t in enumerate(texts)]
    req = SubmitRequest(batch_id="b", items=items, task_type=task,  # type: ignore[arg-type]
                        output_dimensionality=dims)
    inp = Input(req, items)
    assert len(inp.jsonl()) <= inp.max_jsonl_bytes()
    assert inp.est_tokens() == -(-sum(len(t.encode()) for t in texts) // 4)


async def test_a_deleted_shard_job_fails_that_shard_alone(stack: Stack) -> None:
    """One shard's job deleted through the API: that shard fails whole and its items go
    round; its siblings' results are kept, every slot comes back, the batch succeeds."""
    await stack.emulator.set_faults(job_pending_s=600)
    env = {"BATCHYARD_MAX_JOB_TOKENS": "5000", "BATCHYARD_POLL_INTERVAL": "1s"}
    await stack.pod("submit", "poll", **env)
    nc = await stack.nc()
    db = await stack.db()
    await submit(nc, _big("cut", 900, 40))
    await wait_for(lambda: db.fetchval(
        "SELECT count(*) >= 3 FROM batchyard.jobs WHERE state = 'pending'"
        " AND batch_id = 'cut' AND attempt = 0"), 60)
    await wait_for(lambda: db.fetchval(
        "SELECT status = 'submitted' FROM batchyard.batches WHERE batch_id = 'cut'"), 60)
    shards = await db.fetch("SELECT shard, job_name, items FROM batchyard.jobs"
                            " WHERE batch_id = 'cut' ORDER BY shard")
    victim = shards[1]
    client = genai.Client(api_key=KEY, http_options={"base_url": stack.emulator.url})
    await client.aio.batches.delete(name=victim["job_name"])
    await stack.emulator.set_faults()  # jobs made from now on run at once
    await stack.emulator.advance(600)  # and the remaining shards finish
    assert await wait_finished(stack, 1, timeout=120) == {"succeeded": 1}, "\n".join(
        line for line in stack.logs().splitlines() if "warn" in line or "error" in line)
    assert await db.fetchval("SELECT count(*) FROM batchyard.embeddings"
                             " WHERE batch_id = 'cut'") == 900
    jobs = await db.fetch("SELECT attempt, shard, state, items FROM batchyard.jobs"
                          " WHERE batch_id = 'cut' ORDER BY attempt, shard")
    assert {(j["shard"], j["state"]) for j in jobs if j["attempt"] == 0} == {
        (s["shard"], "failed" if s["shard"] == victim["shard"] else "succeeded")
        for s in shards}
    # Only the deleted shard's items were embedded again.
    assert sum(j["items"] for j in jobs if j["attempt"] == 1) == victim["items"]
    assert not [j for j in jobs if j["state"] in ("creating", "pending", "running")]
    assert await stream_messages(nc, subjects.DEAD) == []
    assert "shard.failed" in stack.logs()
    await db.close()
    await nc.close()
