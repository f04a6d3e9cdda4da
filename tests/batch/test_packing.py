"""Packing (CONTRACT §12) over the real servers: small batches share one job, and every
member finishes as if the job had been its own."""

from __future__ import annotations

import asyncio
import io
import json
import time
from typing import Any

import msgspec
import numpy as np
import pytest

from events import subjects
from events.payloads import DEFAULT_MODEL, Completed, Dead, Item, SubmitRequest
from sandbox.emulator import embed
from tests.harness import Stack, batch, stream_messages, submit, wait_finished, wait_for
from tests.keys import NEW_KEY, n_parked, rotate

PACK = {"BATCHYARD_PACK_WAIT": "1s"}


def _packs(state: dict[str, Any]) -> list[dict[str, Any]]:
    return [j for j in state["jobs"] if (j["display_name"] or "").startswith("pack:")]


async def _completed(stack: Stack) -> dict[str, Completed]:
    nc = await stack.nc()
    try:
        return {c.batch_id: c for c in (msgspec.json.decode(m, type=Completed)
                                        for m in await stream_messages(nc, subjects.COMPLETED))}
    finally:
        await nc.close()


async def test_small_batches_share_one_job_and_finish_as_their_own(stack: Stack) -> None:
    await stack.pod("submit", "poll", **PACK)
    nc = await stack.nc()
    reqs = [batch(f"s{n}", 20 + n, output_dimensionality=768) for n in range(12)]
    for req in reqs:
        await submit(nc, req)
    assert await wait_finished(stack, len(reqs)) == {"succeeded": len(reqs)}
    state = await stack.emulator.state()
    packs = _packs(state)
    assert len(state["jobs"]) == len(packs) == 1, state["jobs"]
    assert packs[0]["request_count"] == sum(len(r.items or []) for r in reqs)
    done = await _completed(stack)
    db = await stack.db()
    for req in reqs:
        c = done[req.batch_id]
        assert c.job_name == packs[0]["name"] and c.items_embedded == len(req.items or [])
        rows = await db.fetch("SELECT item_id, embedding FROM batchyard.embeddings"
                              " WHERE batch_id = $1", req.batch_id)
        texts = {i.id: i.text for i in req.items or []}
        assert {r["item_id"] for r in rows} == set(texts)
        for r in rows:  # each vector is its own text's, in direction and at unit length
            got = np.asarray(r["embedding"])
            want = np.asarray(embed.vector(DEFAULT_MODEL, texts[r["item_id"]], 768))
            assert abs(float(got @ want) / float(np.linalg.norm(want)) - 1) < 1e-3
    pack = await db.fetchrow("SELECT * FROM batchyard.packs")
    assert pack["state"] == "succeeded" and pack["display_name"] == packs[0]["display_name"]
    code, out = await stack.cli("batches", "show", "s3", "--json")
    assert code == 0, out
    shown = json.loads(out)["packs"]
    assert [(p["pack_id"], p["job_name"], p["items"]) for p in shown] == [
        (pack["pack_id"], packs[0]["name"], 23)]
    own = -(-sum(len(i.text.encode()) for i in reqs[3].items or []) // 4)
    assert json.loads(out)["tokens_batch"] == shown[0]["est_tokens"] == own  # its share
    code, out = await stack.cli("status", "--json")
    assert code == 0, out
    status = json.loads(out)
    assert status["cost"]["tokens_batch"] == pack["est_tokens"]
    assert status["quota"]["active_jobs"] == status["quota"]["active_packs"] == 0
    assert await db.fetchval("SELECT count(*) FROM batchyard.pack_members") == len(reqs)
    await db.close()
    await nc.close()


async def test_a_lone_batch_waits_no_longer_than_the_pack_wait(stack: Stack) -> None:
    await stack.pod("submit", "poll", BATCHYARD_PACK_WAIT="3s")
    await stack.started()
    nc = await stack.nc()
    start = time.monotonic()
    await submit(nc, batch("lone", 30))
    assert await wait_finished(stack, 1) == {"succeeded": 1}
    took = time.monotonic() - start
    assert 3 <= took < 3 + 10, took  # sealed by its wait, then one short job
    assert len(_packs(await stack.emulator.state())) == 1
    await nc.close()


async def test_packs_are_sealed_at_the_job_token_bound(stack: Stack) -> None:
    # 40 batches of about 300 tokens, at most 2,000 tokens a job: several packs, none over.
    await stack.pod("submit", "poll", BATCHYARD_PACK_WAIT="5s", BATCHYARD_MAX_JOB_TOKENS="2000")
    nc = await stack.nc()
    for n in range(40):
        await submit(nc, batch(f"t{n}", 30))
    assert await wait_finished(stack, 40) == {"succeeded": 40}
    packs = _packs(await stack.emulator.state())
    sizes = sorted(p["est_tokens"] for p in packs)
    one = max(sizes) // 5  # no batch is bigger than a fifth of the largest pack here
    assert sum(p["request_count"] for p in packs) == 40 * 30
    assert all(s <= 2000 for s in sizes), sizes
    # Sealed because the next batch would not fit: all but the last are nearly full.
    assert all(s + one > 2000 for s in sizes[1:]), sizes
    assert len(packs) >= -(-sum(sizes) // 2000)
    await nc.close()


async def test_item_failures_go_round_in_their_own_batch(stack: Stack) -> None:
    await stack.emulator.set_faults(item_error_rate=0.1, seed=3)
    await stack.pod("submit", "poll", **PACK)
    nc = await stack.nc()
    reqs = [batch(f"f{n}", 40) for n in range(8)]
    for req in reqs:
        await submit(nc, req)
    assert await wait_finished(stack, 8, timeout=180) == {"succeeded": 8}
    db = await stack.db()
    rows = {r["batch_id"]: r for r in await db.fetch("SELECT * FROM batchyard.batches")}
    counts = dict(await db.fetch("SELECT batch_id, count(*) FROM batchyard.embeddings"
                                 " GROUP BY batch_id"))
    assert counts == {r.batch_id: 40 for r in reqs}
    assert any(r["attempt"] > 0 for r in rows.values())  # someone's items went round
    members = await db.fetch("SELECT batch_id, attempt, items FROM batchyard.pack_members"
                             " WHERE attempt > 0")
    for m in members:  # a next attempt carries only that batch's failed items
        assert m["items"] < 40
    await db.close()
    await nc.close()


async def test_a_job_failed_whole_fails_every_members_attempt(stack: Stack) -> None:
    await stack.emulator.set_faults(job_outcome="failed", job_outcome_rate=1.0)
    await stack.pod("submit", "poll", **PACK)
    nc = await stack.nc()
    for n in range(5):
        await submit(nc, batch(f"w{n}", 25))
    db = await stack.db()
    # The pack's outcome is drawn when it is created: the jobs after it succeed.
    await wait_for(lambda: _has_pack(stack), 60, what="the pack's job made")
    await stack.emulator.set_faults()
    assert await wait_finished(stack, 5) == {"succeeded": 5}
    rows = await db.fetch("SELECT job_failures, attempt FROM batchyard.batches")
    assert [(r["job_failures"], r["attempt"]) for r in rows] == [(1, 1)] * 5
    names = [j["display_name"] for j in (await stack.emulator.state())["jobs"]]
    # The failed pack, then each member alone (a batch whose job failed goes alone).
    assert sum(n.startswith("pack:") for n in names) == 1
    assert sorted(n for n in names if not n.startswith("pack:")) == [f"w{n}:1" for n in range(5)]
    await db.close()
    await nc.close()


async def test_a_lost_create_answer_is_adopted_not_repeated(stack: Stack) -> None:
    await stack.emulator.set_faults(create_lost_rate=1.0)
    await stack.pod("submit", "poll", **PACK)
    nc = await stack.nc()
    for n in range(6):
        await submit(nc, batch(f"l{n}", 20))
    await wait_for(lambda: _has_pack(stack), 60, what="the pack's job made")
    await stack.emulator.set_faults()
    assert await wait_finished(stack, 6) == {"succeeded": 6}
    packs = _packs(await stack.emulator.state())
    assert len(packs) == len({p["display_name"] for p in packs}) == 1
    await nc.close()


async def _has_pack(stack: Stack) -> bool:
    return bool(_packs(await stack.emulator.state()))


async def test_models_dims_and_task_types_are_never_packed_together(stack: Stack) -> None:
    await stack.pod("submit", "poll", **PACK)
    nc = await stack.nc()
    kinds = [{}, {"output_dimensionality": 768}, {"task_type": "RETRIEVAL_QUERY"},
             {"model": "gemini-embedding-2"}]
    for k, fields in enumerate(kinds):
        for n in range(3):
            await submit(nc, batch(f"k{k}-{n}", 20, **fields))
    assert await wait_finished(stack, 12) == {"succeeded": 12}
    packs = _packs(await stack.emulator.state())
    assert len(packs) == 4 and all(p["request_count"] == 60 for p in packs)
    await nc.close()


async def test_a_pack_over_the_inline_bound_goes_by_file(stack: Stack) -> None:
    await stack.pod("submit", "poll", **PACK)
    nc = await stack.nc()
    text = "y" * 3000
    for n in range(6):  # 6 batches of 80 texts of 3 kB: over 1 MiB, a file job
        await submit(nc, SubmitRequest(batch_id=f"big{n}", items=[
            Item(f"big{n}-{i}", f"{n} {i} {text}") for i in range(80)]))
    assert await wait_finished(stack, 6) == {"succeeded": 6}
    packs = _packs(await stack.emulator.state())
    assert len(packs) == 1 and packs[0]["input_file"]
    db = await stack.db()
    assert await db.fetchval("SELECT count(*) FROM batchyard.embeddings") == 480
    await db.close()
    nc2 = await stack.nc()
    assert [msgspec.json.decode(m, type=Dead) for m in
            await stream_messages(nc2, subjects.DEAD)] == []
    await nc2.close()
    await nc.close()


def test_a_pack_poll_names_a_pack_or_a_batch_never_both() -> None:
    from events.payloads import InvalidMessage, PollRequest, decode

    pack = "pk" + "0" * 32
    got = decode(b'{"pack": "%s", "job_name": "batches/x"}' % pack.encode(), PollRequest)
    assert got.pack == pack and got.batch_id is None
    for bad in (b'{"job_name": "batches/x"}',
                b'{"pack": "%s", "batch_id": "b", "job_name": "batches/x"}' % pack.encode(),
                b'{"pack": "pk123", "job_name": "batches/x"}'):
        try:
            decode(bad, PollRequest)
        except InvalidMessage:
            continue
        raise AssertionError(f"accepted {bad!r}")


async def test_cancelling_a_member_drops_only_its_results(stack: Stack) -> None:
    await stack.emulator.set_faults(job_pending_s=0, job_running_s=600)
    await stack.pod("submit", "poll", **PACK)
    nc = await stack.nc()
    for n in range(4):
        await submit(nc, batch(f"c{n}", 20))
    db = await stack.db()
    await wait_for(lambda: db.fetchval(
        "SELECT count(*) = 4 FROM batchyard.batches WHERE status = 'submitted'"), 60,
        what="the pack's job running")
    for half in ("c1", "c3"):
        code, out = await stack.cli("batches", "cancel", half)
        assert code == 0 and "goes on for the other members" in out, out
    await stack.emulator.advance(600)
    done = await wait_for(lambda: db.fetchval(
        "SELECT count(*) = 2 FROM batchyard.batches WHERE status = 'succeeded'"), 60,
        what="the other members finished")
    assert done
    counts = dict(await db.fetch("SELECT batch_id, count(*) FROM batchyard.embeddings"
                                 " GROUP BY batch_id"))
    assert counts == {"c0": 20, "c2": 20}
    assert dict(await db.fetch("SELECT batch_id, status FROM batchyard.batches WHERE"
                               " batch_id IN ('c1', 'c3')")) == {"c1": "cancelled",
                                                                "c3": "cancelled"}
    completed = await _completed(stack)
    assert sorted(completed) == ["c0", "c2"]
    assert [j["state"] for j in _packs(await stack.emulator.state())] == [
        "BATCH_STATE_SUCCEEDED"]  # the job ran on for the members left

    # A pack whose every member is cancelled has its job cancelled, and its slot back.
    for n in range(2):
        await submit(nc, batch(f"x{n}", 20))
    await wait_for(lambda: db.fetchval(
        "SELECT count(*) = 2 FROM batchyard.batches WHERE batch_id LIKE 'x%'"
        " AND status = 'submitted'"), 60, what="the second pack's job running")
    assert "goes on" in (await stack.cli("batches", "cancel", "x0"))[1]
    code, out = await stack.cli("batches", "cancel", "x1")
    assert code == 0 and "cancelled (no member left)" in out, out
    await wait_for(lambda: db.fetchval(
        "SELECT count(*) = 0 FROM batchyard.packs WHERE state IN"
        " ('creating', 'pending', 'running')"), 60, what="every pack's slot back")
    await db.close()
    await nc.close()


async def test_key_expiry_while_a_pack_runs_parks_it_once_and_resumes_the_same_job(
        stack: Stack) -> None:
    from tests.conftest import KEY
    from tests.keys import NEW_KEY, n_parked, parked, rotate

    await stack.emulator.set_faults(job_pending_s=1, job_running_s=600)
    await stack.emulator.set_key(NEW_KEY, "valid")
    await stack.pod("submit", "poll", **PACK)
    await stack.pod("key-health")
    await stack.pod("recovery")
    nc = await stack.nc()
    for n in range(4):
        await submit(nc, batch(f"a{n}", 20))
    db = await stack.db()
    await wait_for(lambda: db.fetchval(
        "SELECT count(*) = 4 FROM batchyard.batches WHERE status = 'submitted'"), 60,
        what="the pack's job running")
    quota = json.loads((await stack.cli("status", "--json"))[1])["quota"]
    assert (quota["active_jobs"], quota["active_packs"], quota["packs_filling"]) == (1, 1, 0)
    await stack.emulator.set_key(KEY, "expired")
    await wait_for(lambda: n_parked(stack, 1), 60, what="the pack's poll parked")
    assert await parked(stack) == 1  # once for the pack
    assert dict(await db.fetch("SELECT status, count(*) FROM batchyard.batches"
                               " GROUP BY status")) == {"auth_failed": 4}
    listed = json.loads((await stack.cli("parked", "list", "--json"))[1])
    assert [p["batch_id"] for p in listed] == [
        await db.fetchval("SELECT pack_id FROM batchyard.packs")]
    await rotate(stack, NEW_KEY)
    await wait_for(lambda: db.fetchval(
        "SELECT count(*) = 4 FROM batchyard.batches WHERE status = 'submitted'"), 60,
        what="the pack's poll replayed")
    await stack.emulator.advance(600)
    assert await wait_finished(stack, 4) == {"succeeded": 4}
    packs = _packs(await stack.emulator.state())
    assert len(packs) == 1 and len((await stack.emulator.state())["jobs"]) == 1
    await db.close()
    await nc.close()


async def test_a_sealer_stopped_while_parking_leaves_no_member_behind(stack: Stack) -> None:
    from tests.conftest import KEY

    await stack.emulator.set_key(NEW_KEY, "valid")
    await stack.emulator.set_key(KEY, "expired")
    doomed = await stack.pod("submit", BATCHYARD_FAILPOINTS="pack.before_parks",
                             BATCHYARD_PACK_WAIT="2s")
    await stack.pod("poll")
    await stack.pod("key-health")
    await stack.pod("recovery")
    nc = await stack.nc()
    for n in range(3):
        await submit(nc, batch(f"h{n}", 20))
    assert await asyncio.wait_for(doomed.proc.wait(), 60) == -9
    await stack.pod("submit", BATCHYARD_PACK_WAIT="2s")
    await wait_for(lambda: n_parked(stack, 3), 60, what="each member parked")
    assert "pack.members_left" in stack.logs()
    await rotate(stack, NEW_KEY)
    assert await wait_finished(stack, 3) == {"succeeded": 3}
    assert [p["request_count"] for p in _packs(await stack.emulator.state())] == [60]
    await nc.close()


async def test_a_bad_key_at_sealing_parks_each_members_own_message(stack: Stack) -> None:
    from tests.conftest import KEY
    from tests.keys import NEW_KEY, n_parked, parked, rotate

    await stack.emulator.set_key(NEW_KEY, "valid")
    await stack.emulator.set_key(KEY, "expired")
    await stack.pod("submit", "poll", BATCHYARD_PACK_WAIT="2s")
    await stack.pod("key-health")
    await stack.pod("recovery")
    nc = await stack.nc()
    for n in range(3):
        await submit(nc, batch(f"k{n}", 20))
    await wait_for(lambda: n_parked(stack, 3), 60, what="each member parked")
    assert await parked(stack) == 3  # one park a member, none for the pack
    db = await stack.db()
    assert dict(await db.fetch("SELECT status, count(*) FROM batchyard.batches"
                               " GROUP BY status")) == {"auth_failed": 3}
    listed = json.loads((await stack.cli("parked", "list", "--json"))[1])
    assert sorted(p["batch_id"] for p in listed) == ["k0", "k1", "k2"]
    assert await db.fetchval("SELECT state FROM batchyard.packs") == "cancelled"
    assert (await stack.emulator.state())["jobs"] == []
    await rotate(stack, NEW_KEY)
    assert await wait_finished(stack, 3) == {"succeeded": 3}
    packs = _packs(await stack.emulator.state())
    assert len(packs) == 1 and packs[0]["request_count"] == 60, packs  # packed again
    assert await db.fetchval("SELECT count(*) FROM batchyard.pack_members") == 3
    await db.close()
    await nc.close()


@pytest.mark.parametrize("point", ["pack.after_admit", "pack.after_create", "pack.before_poll"])
async def test_a_sealer_killed_at_any_step_leaves_one_job_per_pack(stack: Stack,
                                                                   point: str) -> None:
    doomed = await stack.pod("submit", BATCHYARD_FAILPOINTS=point, **PACK)
    await stack.pod("poll", **PACK)
    nc = await stack.nc()
    for n in range(4):
        await submit(nc, batch(f"d{n}", 20))
    assert await asyncio.wait_for(doomed.proc.wait(), 60) == -9
    await stack.pod("submit", **PACK)
    assert await wait_finished(stack, 4) == {"succeeded": 4}
    packs = _packs(await stack.emulator.state())
    assert len(packs) == 1 and packs[0]["request_count"] == 80, packs
    # Only a creation whose answer was lost with its pod has a job to adopt.
    assert ("job.adopted" in stack.logs()) == (point == "pack.after_create")
    db = await stack.db()
    assert await db.fetchval("SELECT count(*) FROM batchyard.packs WHERE state NOT IN"
                             " ('succeeded')") == 0
    assert len(await _completed(stack)) == 4
    await db.close()
    await nc.close()


async def test_a_pack_meeting_the_quota_gate_waits_then_goes_as_one_job(stack: Stack) -> None:
    """429 on creation and a slot held by another job: the pack waits, never fails."""
    await stack.emulator.set_faults(job_pending_s=0.5, job_running_s=3)
    env = {**PACK, "BATCHYARD_MAX_ACTIVE_JOBS": "1", "BATCHYARD_QUOTA_COOLDOWN": "1s",
           "BATCHYARD_QUOTA_COOLDOWN_MAX": "2s", "BATCHYARD_MAX_JOB_TOKENS": "4000"}
    await stack.pod("submit", "poll", **env)
    await stack.started()
    nc = await stack.nc()
    await submit(nc, batch("big", 400))  # over half a job: alone, and holding the one slot
    db = await stack.db()
    await wait_for(lambda: db.fetchval("SELECT count(*) = 1 FROM batchyard.jobs"
                                       " WHERE state IN ('pending', 'running')"), 60,
                   what="the big batch's job running")
    await stack.emulator.set_faults(job_pending_s=0.5, job_running_s=3, create_429_for_s=5)
    for n in range(5):
        await submit(nc, batch(f"q{n}", 20))
    assert await wait_finished(stack, 6, timeout=120) == {"succeeded": 6}
    state = await stack.emulator.state()
    assert [p["request_count"] for p in _packs(state)] == [100]
    assert [j["display_name"] for j in state["jobs"] if j not in _packs(state)] == ["big:0"]
    assert state["calls"][stack.key]["batches.create"] > 2  # the pack was refused first
    rows = await db.fetch("SELECT job_failures, attempt FROM batchyard.batches")
    assert {(r["job_failures"], r["attempt"]) for r in rows} == {(0, 0)}
    assert await stream_messages(nc, subjects.DEAD) == []
    await db.close()
    await nc.close()


async def test_a_job_failing_every_time_sends_each_member_online_on_its_own_count(
        stack: Stack) -> None:
    await stack.emulator.set_faults(job_outcome="failed", job_outcome_rate=1.0)
    await stack.pod("submit", "poll", **PACK)
    nc = await stack.nc()
    for n in range(3):
        await submit(nc, batch(f"o{n}", 20))
    assert await wait_finished(stack, 3, timeout=120) == {"succeeded": 3}
    db = await stack.db()
    rows = await db.fetch("SELECT batch_id, job_failures, embed_path FROM batchyard.batches"
                          " ORDER BY batch_id")
    # The pack's failure counts once for each member, then each fails alone once more.
    assert [(r["job_failures"], r["embed_path"]) for r in rows] == [(2, "online")] * 3
    names = sorted(j["display_name"] for j in (await stack.emulator.state())["jobs"])
    assert sum(n.startswith("pack:") for n in names) == 1
    assert [n for n in names if not n.startswith("pack:")] == ["o0:1", "o1:1", "o2:1"]
    await db.close()
    await nc.close()


async def test_a_member_cancelled_and_resubmitted_while_its_pack_runs_ends_once(
        stack: Stack) -> None:
    await stack.emulator.set_faults(job_pending_s=1, job_running_s=600)
    await stack.pod("submit", "poll", **PACK)
    nc = await stack.nc()
    for n in range(3):
        await submit(nc, batch(f"r{n}", 20))
    db = await stack.db()
    await wait_for(lambda: db.fetchval(
        "SELECT count(*) = 3 FROM batchyard.batches WHERE status = 'submitted'"), 60,
        what="the pack's job running")
    assert (await stack.cli("batches", "cancel", "r1"))[0] == 0
    code, out = await stack.cli("batches", "resubmit", "r1")
    assert code == 0 and "attempt 1" in out, out
    await wait_for(lambda: db.fetchval(
        "SELECT status = 'submitted' AND attempt = 1 FROM batchyard.batches"
        " WHERE batch_id = 'r1'"), 60, what="r1's next attempt in a pack of its own")
    await stack.emulator.advance(600)
    assert await wait_finished(stack, 3) == {"succeeded": 3}
    packs = _packs(await stack.emulator.state())
    assert sorted(p["request_count"] for p in packs) == [20, 60]
    counts = dict(await db.fetch("SELECT batch_id, count(*) FROM batchyard.embeddings"
                                 " GROUP BY batch_id"))
    assert counts == {"r0": 20, "r1": 20, "r2": 20}
    done = [m for m in await stream_messages(nc, subjects.COMPLETED)]
    r1 = [msgspec.json.decode(m, type=Completed) for m in done]
    r1 = [c for c in r1 if c.batch_id == "r1"]
    second = next(p for p in packs if p["request_count"] == 20)
    assert [(c.attempt, c.job_name) for c in r1] == [(1, second["name"])]
    await db.close()
    await nc.close()


async def test_the_sweep_deletes_only_pack_input_files_no_job_needs(stack: Stack) -> None:
    """A pack's file goes once its pack is over or gone, or once its job reads another
    file (an upload a stopped sealer never used); a file a pack may still use stays."""
    from google import genai

    from tests.conftest import KEY

    client = genai.Client(api_key=KEY, http_options={"base_url": stack.emulator.url})

    async def upload(pack_id: str) -> str:
        f = await client.aio.files.upload(
            file=io.BytesIO(b'{"key": "a/b", "request": {}}\n'),
            config={"mime_type": "application/jsonl", "display_name": f"pack:{pack_id}"})
        return str(f.name)

    ids = {k: "pk" + f"{n:x}" * 32 for n, k in enumerate(
        ("done", "running", "creating", "gone", "other"), 1)}
    files = {k: await upload(v) for k, v in ids.items()}
    stray = await upload(ids["running"])  # uploaded by a sealer that stopped before creating
    db = await stack.db()
    for k, state in (("done", "succeeded"), ("running", "running"), ("creating", "creating"),
                     ("other", "cancelled")):
        await db.execute(
            "INSERT INTO batchyard.packs (pack_id, display_name, model, state, job_name,"
            " input_file) VALUES ($1, $2, 'm', $3, $4, $5)", ids[k], f"pack:{ids[k]}", state,
            None if state == "creating" else f"batches/{k}", files[k])
    await stack.pod("poll", BATCHYARD_FILE_SWEEP_INTERVAL="1s")
    gone = {files["done"], files["gone"], files["other"], stray}
    kept = {files["running"], files["creating"]}

    async def swept() -> bool:
        return not gone & {f["name"] for f in (await stack.emulator.state())["files"]}

    await wait_for(swept, 30, what="the packs' orphaned files swept")
    await asyncio.sleep(2)  # another round or two: nothing else goes
    names = {f["name"] for f in (await stack.emulator.state())["files"]}
    assert kept <= names and not gone & names
    await db.close()


async def test_a_pack_stuck_past_the_max_wait_is_cancelled_and_every_member_goes_round(
        stack: Stack) -> None:
    """Every job hangs: the pack's is cancelled after BATCHYARD_MAX_WAIT and each member
    goes round alone, then (its own second whole failure) online."""
    await stack.emulator.set_faults(job_pending_s=0, job_running_s=600)
    await stack.pod("submit", "poll", BATCHYARD_MAX_WAIT="3s", **PACK)
    nc = await stack.nc()
    for n in range(3):
        await submit(nc, batch(f"m{n}", 20))
    assert await wait_finished(stack, 3, timeout=120) == {"succeeded": 3}
    db = await stack.db()
    rows = await db.fetch("SELECT job_failures, attempt, embed_path FROM batchyard.batches")
    assert [tuple(r) for r in rows] == [(2, 2, "online")] * 3
    jobs = (await stack.emulator.state())["jobs"]
    assert sorted(j["display_name"] for j in jobs if not j["display_name"].startswith(
        "pack:")) == ["m0:1", "m1:1", "m2:1"]
    assert {j["state"] for j in jobs} <= {"BATCH_STATE_CANCELLING", "BATCH_STATE_CANCELLED"}
    assert len(_packs({"jobs": jobs})) == 1
    assert await db.fetchval("SELECT state FROM batchyard.packs") == "cancelled"
    assert dict(await db.fetch("SELECT batch_id, count(*) FROM batchyard.embeddings"
                               " GROUP BY batch_id")) == {"m0": 20, "m1": 20, "m2": 20}
    await db.close()
    await nc.close()
