"""The main path over real processes: two pods per role, nats-server, PostgreSQL, emulator."""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter

import msgspec
import numpy as np

from events import jetstream as defs
from events import subjects
from events.payloads import (
    DEFAULT_MODEL,
    Completed,
    Dead,
    Item,
    SubmitRequest,
    decode,
    encode,
    encode_items_jsonl,
)
from sandbox.emulator import embed
from tests.harness import Stack, batch, stream_messages, submit, wait_finished, wait_for


def _job_names(state: dict) -> list[str]:
    return [j["display_name"] for j in state["jobs"]]


async def test_200_batches_each_item_embedded_once(stack: Stack) -> None:
    """200 batches of 1 to 500 items: every item stored once, right dims, one job per attempt."""
    await stack.pipeline_pods()
    rng = random.Random(7)
    sizes = {f"b{n:03d}": rng.randint(1, 500) for n in range(200)}
    nc = await stack.nc()
    for bid, n in sizes.items():
        await submit(nc, batch(bid, n, output_dimensionality=8))
    counts = await wait_finished(stack, len(sizes), timeout=240)
    assert counts == {"succeeded": 200}
    db = await stack.db()
    rows = await db.fetch("SELECT batch_id, count(*) AS n, min(dims) AS lo, max(dims) AS hi, "
                          "max(array_length(embedding, 1)) AS len "
                          "FROM batchyard.embeddings GROUP BY batch_id")
    assert {r["batch_id"]: r["n"] for r in rows} == sizes
    assert {(r["lo"], r["hi"], r["len"]) for r in rows} == {(8, 8, 8)}
    totals = await db.fetch("SELECT items_total, items_embedded, items_failed FROM "
                            "batchyard.batches")
    assert all(t["items_total"] == t["items_embedded"] and not t["items_failed"] for t in totals)
    await db.close()
    names = _job_names(await stack.emulator.state())
    assert len(names) == len(set(names)) == sum(1 for n in sizes.values() if n > 10)
    completed = [decode(m, Completed) for m in await stream_messages(nc, subjects.COMPLETED)]
    assert sorted(c.batch_id for c in completed) == sorted(sizes)
    assert all(c.status == "succeeded" and c.items_embedded == sizes[c.batch_id]
               for c in completed)
    await nc.close()


async def test_default_dimensionality_is_the_models(stack: Stack) -> None:
    """Without output_dimensionality, vectors have the model's 3072 values, unit length."""
    await stack.pod("submit", "poll")
    nc = await stack.nc()
    await submit(nc, batch("full", 20))
    assert await wait_finished(stack, 1) == {"succeeded": 1}
    db = await stack.db()
    dims = await db.fetch("SELECT dims, (SELECT sum(x * x) FROM unnest(embedding) x) AS norm "
                          "FROM batchyard.embeddings")
    assert len(dims) == 20 and {r["dims"] for r in dims} == {3072}
    assert all(abs(r["norm"] - 1.0) < 1e-3 for r in dims)
    await db.close()
    await nc.close()


async def test_duplicates_and_redeliveries_create_no_second_job(stack: Stack) -> None:
    """The same batch published many times, with and without ids, makes one job."""
    await stack.pipeline_pods()
    nc = await stack.nc()
    js = nc.jetstream()
    reqs = [batch(f"dup{n}", 30) for n in range(10)]
    for req in reqs:
        await submit(nc, req)
        await submit(nc, req)  # same Nats-Msg-Id: dropped by the stream
        await js.publish(subjects.SUBMIT, encode(req))  # no id: a second message
    assert await wait_finished(stack, 10) == {"succeeded": 10}
    for req in reqs:  # after completion: must not re-submit a finished batch
        await js.publish(subjects.SUBMIT, encode(req))
    await asyncio.sleep(2)
    names = _job_names(await stack.emulator.state())
    assert sorted(names) == sorted(f"dup{n}:0" for n in range(10))
    await nc.close()


async def test_kill_between_job_creation_and_db_update_adopts_the_job(stack: Stack) -> None:
    """A submit pod killed -9 right after creating the job: the job is adopted, not re-paid."""
    nc = await stack.nc()
    await nc.jetstream().add_consumer(defs.BATCH, defs.SUBMIT.config.evolve(ack_wait=3.0))
    doomed = await stack.pod("submit", BATCHYARD_FAILPOINTS="submit.after_create")
    await stack.pod("poll")
    await submit(nc, batch("crash", 40))
    assert await asyncio.wait_for(doomed.proc.wait(), 30) == -9
    await stack.pod("submit")
    assert await wait_finished(stack, 1) == {"succeeded": 1}
    assert _job_names(await stack.emulator.state()) == ["crash:0"]
    assert "job.adopted" in stack.logs()
    await nc.close()


async def test_server_errors_and_429_bursts_still_succeed(stack: Stack) -> None:
    """10% 5xx and bursts of 429 with RetryInfo: everything succeeds within budget."""
    await stack.emulator.set_faults(error_rate=0.1, rate_limit_burst=6, retry_delay_s=1, seed=3)
    await stack.pipeline_pods()
    nc = await stack.nc()
    for n in range(30):
        await submit(nc, batch(f"flaky{n}", 25 + n))
    assert await wait_finished(stack, 30, timeout=180) == {"succeeded": 30}
    dead = await stream_messages(nc, subjects.DEAD)
    assert dead == []
    assert "retry.scheduled" in stack.logs()
    await nc.close()


async def test_failed_job_is_resubmitted_then_succeeds(stack: Stack) -> None:
    """A job that ends FAILED is re-submitted as attempt 1, which succeeds."""
    await stack.emulator.set_faults(job_outcome="failed")
    submitter = await stack.pod("submit")
    nc = await stack.nc()
    await submit(nc, batch("phoenix", 50))
    await wait_for(lambda: _jobs(stack, 1), 30, what="job of attempt 0")
    assert await submitter.terminate() == 0
    await stack.emulator.set_faults()  # attempt 1's job is created after this
    await stack.pod("poll")
    await stack.pod("submit")
    assert await wait_finished(stack, 1) == {"succeeded": 1}
    jobs = sorted((j["display_name"], j["state"]) for j in (await stack.emulator.state())["jobs"])
    assert jobs == [("phoenix:0", "BATCH_STATE_FAILED"), ("phoenix:1", "BATCH_STATE_SUCCEEDED")]
    db = await stack.db()
    assert await db.fetchval("SELECT count(*) FROM batchyard.embeddings") == 50
    assert await db.fetchval("SELECT attempt FROM batchyard.batches") == 1
    await db.close()
    await nc.close()


async def _jobs(stack: Stack, n: int) -> bool:
    return len((await stack.emulator.state())["jobs"]) >= n


async def test_per_item_errors_retry_only_those_then_dead_letter(stack: Stack) -> None:
    """Per-item errors: only failed items go round again; the last failures are dead."""
    await stack.emulator.set_faults(item_error_rate=0.3, seed=11)
    await stack.pipeline_pods()
    nc = await stack.nc()
    await submit(nc, batch("spotty", 200))
    counts = await wait_finished(stack, 1, timeout=120)
    db = await stack.db()
    row = await db.fetchrow("SELECT * FROM batchyard.batches")
    embedded = await db.fetchval("SELECT count(*) FROM batchyard.embeddings")
    await db.close()
    assert row["items_embedded"] == embedded and row["items_embedded"] + row["items_failed"] == 200
    assert row["attempt"] == 2 and row["items_failed"] > 0 and counts == {"partial": 1}
    dead = [decode(m, Dead) for m in await stream_messages(nc, subjects.DEAD)]
    assert len(dead) == 1 and dead[0].reason == "item_attempts_exhausted"
    assert dead[0].items is not None and len(dead[0].items) == row["items_failed"]
    replay = msgspec.convert(dead[0].payload, SubmitRequest)
    assert {i.id for i in replay.items or []} == {i.id for i in dead[0].items}
    jobs = (await stack.emulator.state())["jobs"]
    sizes = {j["display_name"]: j["request_count"] for j in jobs}
    assert sizes["spotty:0"] == 200 and sizes["spotty:1"] < 100 and sizes["spotty:2"] < sizes["spotty:1"]
    completed = [decode(m, Completed) for m in await stream_messages(nc, subjects.COMPLETED)]
    assert [(c.status, c.items_failed) for c in completed] == [("partial", row["items_failed"])]
    await nc.close()


async def test_5mb_input_through_the_object_store(stack: Stack) -> None:
    """`batchyard publish` puts a 5 MB input in BATCH_INPUTS; it is uploaded as a file."""
    await stack.pipeline_pods(BATCHYARD_MAX_JOB_TOKENS="2000000")  # one job, not shards
    path = stack.tmp / "big.jsonl"
    text = "x" * 5000
    with path.open("wb") as f:
        for i in range(1000):
            f.write(msgspec.json.encode(Item(f"big-{i}", f"{i} {text}")) + b"\n")
    assert path.stat().st_size > 5_000_000
    code, out = await stack.cli("publish", str(path), "--batch-id", "big",
                                "--output-dimensionality", "16")
    assert code == 0 and "object input/big.jsonl" in out, out
    assert await wait_finished(stack, 1, timeout=120) == {"succeeded": 1}
    state = await stack.emulator.state()
    assert [j["display_name"] for j in state["jobs"]] == ["big:0"]
    assert state["jobs"][0]["input_file"]
    db = await stack.db()
    assert await db.fetchval("SELECT count(*) FROM batchyard.embeddings") == 1000
    await db.close()


async def test_sigterm_mid_run_loses_nothing(stack: Stack) -> None:
    """SIGTERM to every pod mid-run: each exits 0; new pods finish every batch."""
    await stack.pipeline_pods()
    nc = await stack.nc()
    for n in range(40):
        await submit(nc, batch(f"calm{n}", 20 + n))
    db = await stack.db()
    await wait_for(lambda: db.fetchval("SELECT count(*) >= 5 FROM batchyard.batches "
                                       "WHERE status = 'succeeded'"), 60)
    codes = await asyncio.gather(*(p.terminate() for p in list(stack.pods)))
    assert codes == [0, 0, 0, 0]
    await stack.pipeline_pods()
    assert await wait_finished(stack, 40, timeout=120) == {"succeeded": 40}
    assert await db.fetchval("SELECT count(*) FROM batchyard.embeddings") == sum(
        20 + n for n in range(40))
    await db.close()
    await nc.close()


async def test_malformed_messages_do_not_affect_good_ones(stack: Stack) -> None:
    """Bad messages between good ones are dead-lettered with their reason; good ones pass."""
    await stack.pipeline_pods()
    nc = await stack.nc()
    js = nc.jetstream()
    bad = [b"not json", b"[]", b'{"batch_id": "x y", "items": []}', b"\xff\xfe\x00",
           b'{"batch_id": "ok", "items": [{"id": "a", "text": "t"}], "items_object": "o"}',
           json.dumps({"batch_id": "v2", "v": 2, "items": [{"id": "a", "text": "t"}]}).encode(),
           b'{"batch_id": "noobj", "items_object": "missing.jsonl"}']
    for n in range(10):
        await submit(nc, batch(f"good{n}", 15))
        await js.publish(subjects.SUBMIT, bad[n % len(bad)])
    assert await wait_finished(stack, 10) == {"succeeded": 10}
    dead = [decode(m, Dead) for m in await wait_for(
        lambda: _dead_count(nc, 10), 30, what="10 dead letters")]
    assert Counter(d.reason for d in dead) == {"invalid_message": 10}
    assert all(d.stage == "submit" and d.error and d.error.message for d in dead)
    assert {d.batch_id for d in dead} >= {None, "ok", "noobj"}
    await nc.close()


async def _dead_count(nc: object, n: int) -> list[bytes] | None:
    msgs = await stream_messages(nc, subjects.DEAD)  # type: ignore[arg-type]
    return msgs if len(msgs) >= n else None


async def test_a_batch_busy_past_its_deliveries_waits_as_a_copy(stack: Stack) -> None:
    """While another holder keeps the batch's claim past every delivery of its message,
    the message is put back as one fresh copy, never dead-lettered; it then succeeds."""
    db = await stack.db()
    # The claim is a session advisory lock: this connection takes it as a pod would.
    assert await db.fetchval("SELECT pg_try_advisory_lock(hashtext('batchyard'), "
                             "hashtext('busy'))")
    await stack.pod("submit", "poll")
    nc = await stack.nc()
    await submit(nc, batch("busy", 30))

    async def requeued() -> bool:
        return len(await stream_messages(nc, subjects.SUBMIT)) >= 2

    await wait_for(requeued, 90, what="the busy message put back as a copy")
    assert await stream_messages(nc, subjects.DEAD) == []
    await db.execute("SELECT pg_advisory_unlock_all()")
    assert await wait_finished(stack, 1, timeout=60) == {"succeeded": 1}
    assert await stream_messages(nc, subjects.DEAD) == []
    await db.close()
    await nc.close()


async def test_a_later_attempt_waits_for_the_running_one(stack: Stack) -> None:
    """A message of attempt 1 arriving while attempt 0's job runs waits: attempt 0's row
    and job are left alone until it has finished."""
    await stack.emulator.set_faults(job_pending_s=20)
    await stack.pod("submit", "poll", BATCHYARD_POLL_INTERVAL="1s")
    nc = await stack.nc()
    db = await stack.db()
    await submit(nc, batch("early", 30))
    await wait_for(lambda: db.fetchval("SELECT status = 'submitted' FROM batchyard.batches "
                                       "WHERE batch_id = 'early'"), 30)
    await submit(nc, batch("early", 30, attempt=1))
    await asyncio.sleep(6)
    row = await db.fetchrow("SELECT * FROM batchyard.batches WHERE batch_id = 'early'")
    assert (row["attempt"], row["status"]) == (0, "submitted")
    assert _job_names(await stack.emulator.state()) == ["early:0"]
    assert "submit.waiting" in stack.logs() and "handler.crashed" not in stack.logs()
    await stack.emulator.advance(60)

    async def announced() -> list[int] | None:
        done = [decode(m, Completed) for m in await stream_messages(nc, subjects.COMPLETED)]
        return [d.attempt for d in done] or None

    assert (await wait_for(announced, 60))[0] == 0
    await db.close()
    await nc.close()


async def _stored(stack: Stack) -> dict[str, tuple[str, np.ndarray]]:
    """Each stored item's batch and vector, read back as float64."""
    db = await stack.db()
    rows = await db.fetch("SELECT item_id, batch_id, embedding FROM batchyard.embeddings")
    await db.close()
    return {r["item_id"]: (r["batch_id"], np.asarray(r["embedding"], dtype=np.float64))
            for r in rows}


async def test_vectors_are_stored_at_unit_length_on_every_path(stack: Stack) -> None:
    """The API's vectors below 3072 values are not unit length (issue 19): stored ones
    are, online, inline and by file, in the direction of the emulator's vector."""
    await stack.pod("submit", "poll")
    nc = await stack.nc()
    big = "x" * 4000  # 300 of these make a file job: over 1 MiB of JSONL
    requests = [batch("online", 3, output_dimensionality=768),
                batch("inline", 20, output_dimensionality=768),
                batch("inline-full", 20),
                SubmitRequest(batch_id="file", output_dimensionality=768,
                              items_object="file.jsonl")]
    big_items = [Item(f"file-{i}", f"{i} {big}") for i in range(300)]
    store = await nc.jetstream().object_store(defs.BATCH_INPUTS)
    await store.put("file.jsonl", encode_items_jsonl(big_items))  # too big for a message
    texts = {i.id: i.text for r in requests for i in r.items or big_items}
    for req in requests:
        await submit(nc, req)
    assert await wait_finished(stack, 4, timeout=120) == {"succeeded": 4}
    db = await stack.db()
    paths = dict(await db.fetch("SELECT batch_id, embed_path FROM batchyard.batches"))
    await db.close()
    assert paths["online"] == "online" and paths["file"] == "batch"
    jobs = {j["display_name"]: j for j in (await stack.emulator.state())["jobs"]}
    assert jobs["file:0"]["input_file"] and not jobs["inline:0"]["input_file"]
    stored = await _stored(stack)
    assert len(stored) == len(texts)
    for item_id, (batch_id, got) in stored.items():
        want = np.asarray(embed.vector(DEFAULT_MODEL, texts[item_id], got.size))
        assert got.size == (3072 if batch_id == "inline-full" else 768)
        assert abs(np.linalg.norm(got) - 1.0) < 1e-3
        assert got @ want / np.linalg.norm(want) > 1 - 1e-6  # cosine: the same direction
    await nc.close()


async def test_without_normalize_vectors_are_stored_as_returned(stack: Stack) -> None:
    """BATCHYARD_NORMALIZE=false keeps the API's prefix vector, norm below 1."""
    await stack.pod("submit", "poll", BATCHYARD_NORMALIZE="false")
    nc = await stack.nc()
    await submit(nc, batch("raw", 12, output_dimensionality=768))
    assert await wait_finished(stack, 1) == {"succeeded": 1}
    stored = await _stored(stack)
    assert len(stored) == 12
    for n, (_, got) in enumerate(stored[f"raw-{i}"] for i in range(12)):
        text = batch("raw", 12).items[n].text  # type: ignore[index]
        assert np.allclose(got, embed.vector(DEFAULT_MODEL, text, 768), rtol=1e-6, atol=0)
        assert np.linalg.norm(got) < 0.9
    await nc.close()
