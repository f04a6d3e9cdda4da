"""The scenarios: each starts pods, publishes, breaks something on purpose, and drains.

A scenario returns once every accepted batch has settled (or its drain bound passed);
the runner then checks the invariant.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable

import asyncpg
import msgspec
from google import genai
from nats.aio.msg import Msg

from events import jetstream as defs
from events import subjects
from events.payloads import SubmitRequest, encode, encode_items_jsonl
from tests.chaos import hostile
from tests.chaos.env import POD_ROLES, World, consumer_numbers, subject_counts, wait
from tests.chaos.invariant import FINAL
from tests.chaos.ledger import Accepted, good_batch, publish_all, publish_good, publish_sure


async def settled(w: World) -> bool:
    """Every accepted batch final, nothing pending or unacked, nothing parked."""
    numbers = await consumer_numbers(w.js)
    if any(n["pending"] or n["ack_pending"] for n in numbers.values()):
        return False
    if (await w.js.stream_info(defs.BATCH_PARKED)).state.messages:
        return False
    db = await w.db()
    try:
        open_ = await db.fetchval(
            "SELECT count(*) FROM batchyard.batches WHERE batch_id = ANY($1) "
            "AND status <> ALL($2)", list(w.ledger.accepted), list(FINAL))
    finally:
        await db.close()
    return open_ == 0


STALL_S = 20.0


async def _open_batches(w: World) -> int:
    try:
        db = await w.db()
    except (OSError, asyncpg.PostgresError):
        return len(w.ledger.accepted)
    try:
        return int(await db.fetchval(
            "SELECT count(*) FROM batchyard.batches WHERE batch_id = ANY($1) "
            "AND status <> ALL($2)", list(w.ledger.accepted), list(FINAL)))
    except (OSError, asyncpg.PostgresError):
        return len(w.ledger.accepted)
    finally:
        await db.close()


async def _while_progress(w: World, deadline: float) -> bool:
    """Wait for settled while batches keep finishing (none for STALL_S: give up)."""
    best, since = await _open_batches(w), time.monotonic()
    while time.monotonic() < deadline and time.monotonic() - since < STALL_S:
        if await wait(lambda: settled(w), 2.0, every=1.0):
            return True
        if (now := await _open_batches(w)) < best:
            best, since = now, time.monotonic()
    return False


async def drain(w: World) -> None:
    """Wait until settled; record the seconds since the last fault or publish."""
    start = time.monotonic()
    ok = await w.until(lambda: settled(w), w.profile.drain_timeout, every=1.0)
    if w.crashed():
        # The verdict is fail already; the pods left get a while to finish the work, so
        # the report tells a crash from lost work.
        w.figures["pods_crashed_during_run"] = len(w.crashed())
        ok = await _while_progress(w, start + w.profile.drain_timeout)
    end = time.monotonic()
    since = max(w.last_fault or 0.0, w.figures.get("last_publish", 0.0)) or start
    w.figures["drained"] = ok
    w.figures["time_to_drain_s"] = round(end - since, 1) if ok else None


async def finished_at_least(w: World, n: int, timeout: float = 90) -> bool:
    async def enough() -> bool:
        db = await w.db()
        try:
            got = await db.fetchval("SELECT count(*) FROM batchyard.batches WHERE status = ANY($1)",
                                    list(FINAL))
        finally:
            await db.close()
        return int(got) >= n
    return await w.until(enough, timeout)


def _batches(w: World, prefix: str, n: int, max_items: int = 0) -> list[SubmitRequest]:
    return [good_batch(f"{prefix}{i}", w.rng, max_items or w.profile.max_items) for i in range(n)]


async def _publish(w: World, reqs: list[SubmitRequest]) -> None:
    await publish_all(w.js, w.ledger, reqs)
    w.figures["last_publish"] = time.monotonic()


async def kill9(w: World) -> None:
    """kill -9 of a random pod every few seconds through the run; each is replaced 1 s later."""
    await w.pods()
    reqs = _batches(w, "k", w.profile.kill_batches)
    stop = asyncio.Event()

    async def killer() -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), w.profile.kill_every * w.rng.uniform(0.5, 1.5))
            if stop.is_set():
                return
            victim = w.rng.choice(w.live_pods())
            await w.kill(victim)
            await asyncio.sleep(1.0)
            await w.stack.pod(*victim.roles)

    task = asyncio.create_task(killer())
    try:
        chunk = max(1, len(reqs) // 40)
        for start in range(0, len(reqs), chunk):  # spread over kill_span seconds
            await _publish(w, reqs[start:start + chunk])
            await asyncio.sleep(w.profile.kill_span / 40)
        await finished_at_least(w, int(len(reqs) * 0.9), timeout=w.profile.drain_timeout)
    finally:
        stop.set()
        await task
    await drain(w)


async def _first_half(w: World, prefix: str) -> list[SubmitRequest]:
    """Start the pods, publish half the batches and let a few finish; the other half."""
    await w.pods()
    reqs = _batches(w, prefix, w.profile.batches)
    half = len(reqs) // 2
    await _publish(w, reqs[:half])
    await finished_at_least(w, 3)
    return reqs[half:]


NATS_DOWN_S = 12.0  # longer than a JetStream API request's timeout (10 s in the pods)


async def nats_restart(w: World) -> None:
    """nats-server stopped and started again mid-run; its file storage survives."""
    assert w.nats is not None
    rest = await _first_half(w, "n")
    await w.nats.stop()
    w.fault("nats_restart")
    await asyncio.sleep(NATS_DOWN_S)
    await w.nats.start()
    w.mark()
    await _publish(w, rest)
    await drain(w)


async def cluster_node(w: World) -> None:
    """A 3-node cluster, streams at 3 replicas; the BATCH leader is killed -9 mid-run."""
    assert w.cluster is not None
    rest = await _first_half(w, "c")
    info = await w.js.stream_info(defs.BATCH)
    assert info.cluster is not None and info.cluster.leader
    victim = w.cluster.server(info.cluster.leader)
    victim.kill()
    w.fault("nats_node_kill9")
    w.figures["killed_node"] = victim.name
    await _publish(w, rest)
    await drain(w)


async def pg_stop(w: World) -> None:
    """PostgreSQL stopped for 10 s mid-run."""
    rest = await _first_half(w, "p")
    await w.pg.stop()
    w.fault("postgres_stop")
    publishing = asyncio.create_task(_publish(w, rest))
    await asyncio.sleep(10)
    await w.pg.start()
    w.mark()
    await publishing
    await drain(w)


async def _parked(w: World) -> int:
    return (await w.js.stream_info(defs.BATCH_PARKED)).state.messages


async def _rotate(w: World, key: str) -> None:
    await w.emulator.set_key(key, "valid")
    w.keys.add(key)
    w.stack.key_file.write_text(key + "\n")
    await publish_sure(w.js, subjects.KEY_ROTATED, b"", f"chaos-rotated:{key[-8:]}")
    w.fault("key_rotated")


async def key_rotation(w: World) -> None:
    """The key expires and is rotated three times, once while recovery drains."""
    keys = [f"AIzaSyChaosKeyRotated{n:019d}" for n in (1, 2, 3)]
    await w.pods()
    n = w.profile.batches
    waves = [_batches(w, f"r{wave}-", n, max_items=20) for wave in range(4)]
    await _publish(w, waves[0])
    await finished_at_least(w, 3)

    await w.emulator.set_key(w.stack.key, "expired")  # expiry 1, jobs still running
    w.fault("key_expired")
    await _publish(w, waves[1])
    await w.until(lambda: _ge(_parked(w), n // 2), 60)
    await asyncio.sleep(2)

    valid = asyncio.Queue[bytes]()

    async def on_valid(msg: Msg) -> None:
        valid.put_nowait(msg.data)

    sub = await w.nc.subscribe(subjects.KEY_VALID, cb=on_valid)
    try:
        w.figures["parked_before_first_rotation"] = await _parked(w)
        await _rotate(w, keys[0])
        await asyncio.wait_for(valid.get(), 60)
        # Recovery starts its drain on this key.valid: expire the new key at once.
        await w.emulator.set_key(keys[0], "expired")  # expiry 2, mid-drain
        w.fault("key_expired")
        replay = (await consumer_numbers(w.js))["replay"]
        w.figures["mid_drain"] = {"parked": await _parked(w),
                                  "replay_deliveries": replay["deliveries"]}
        await _publish(w, waves[2])
        await asyncio.sleep(3)
        await _rotate(w, keys[1])
        await w.until(lambda: _eq(_parked(w), 0), 60)
        await finished_at_least(w, n * 2, timeout=90)

        await _publish(w, waves[3])
        await asyncio.sleep(1)
        await w.emulator.set_key(keys[1], "expired")  # expiry 3
        w.fault("key_expired")
        await asyncio.sleep(4)
        await _rotate(w, keys[2])
    finally:
        await sub.unsubscribe()
    await drain(w)
    w.figures["key_valid_messages"] = valid.qsize() + 1


async def _ge(value: Awaitable[int], n: int) -> bool:
    return await value >= n


async def _eq(value: Awaitable[int], n: int) -> bool:
    return await value == n


FAULTS = {"error_rate": 0.10, "job_outcome": "failed", "job_outcome_rate": 0.05,
          "item_error_rate": 0.02, "download_latency_ms": 2000, "retry_delay_s": 1,
          "job_pending_s": 0.5, "job_running_s": 1.0}


async def publish_via_store(w: World, req: SubmitRequest) -> None:
    """Put the items in BATCH_INPUTS and publish a batch.submit naming the object."""
    name = f"input/{req.batch_id}.jsonl"
    store = await w.js.object_store(defs.BATCH_INPUTS)
    await store.put(name, encode_items_jsonl(req.items or []))
    by_ref = msgspec.structs.replace(req, items=None, items_object=name)
    await publish_sure(w.js, subjects.SUBMIT, encode(by_ref),
                       subjects.submit_id(req.batch_id, req.attempt))
    w.ledger.accept(req)
    w.ledger.published += 1


async def emulator_faults(w: World) -> None:
    """10% 5xx, 429 bursts, 5% failed jobs, 2% per-item errors, slow downloads."""
    await w.emulator.set_faults(**FAULTS)
    await w.pods()
    reqs = _batches(w, "f", w.profile.batches)
    # Requests over 1 MiB go through files, whose results are downloaded (slowly).
    big = [good_batch(f"fbig{i}", w.rng, 40, text_chars=30_000, n=40) for i in range(2)]
    for req in big:  # over the message size limit: the items go through BATCH_INPUTS
        await publish_via_store(w, req)
    stop = asyncio.Event()

    async def bursts() -> None:
        for _ in range(w.profile.bursts):
            await w.emulator.set_faults(**FAULTS, rate_limit_burst=20)
            w.fault("429_burst")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 4)
            if stop.is_set():
                return

    task = asyncio.create_task(bursts())
    try:
        await _publish(w, reqs)
        await finished_at_least(w, int(len(reqs) * 0.8), timeout=w.profile.drain_timeout)
    finally:
        stop.set()
        await task
    await drain(w)
    state = await w.emulator.state()
    injected = state.get("injected", {})
    w.faults["http_5xx"] += injected.get("5xx", 0)
    w.faults["http_429"] += injected.get("429", 0)
    w.faults["job_failed"] += sum(1 for j in state["jobs"] if j["state"] == "BATCH_STATE_FAILED")
    w.faults["item_errors"] += sum(j.get("failed_requests") or 0 for j in state["jobs"])
    downloads = sum(calls.get("files.download", 0) for calls in state["calls"].values())
    w.faults["slow_downloads"] += downloads
    await w.emulator.set_faults(job_pending_s=0.5, job_running_s=1.0)


async def hostile_stream(w: World) -> None:
    """At least 10,000 malformed and hostile messages (hypothesis), good batches between."""
    stream = await asyncio.to_thread(hostile.draw_stream, w.profile.hostile, w.rng.randrange(1 << 30))
    await w.pods()
    good = iter(_batches(w, "g", len(stream) // w.profile.good_every + 1))
    kinds: dict[str, int] = {}
    sem = asyncio.Semaphore(64)

    async def one(i: int, h: hostile.Hostile) -> None:
        async with sem:
            if h.kind == "valid":
                ack = await publish_sure(w.js, subjects.SUBMIT, h.data, f"chaos-valid:{i}")
                w.ledger.accepted[h.batch_id] = _accepted(h)
                w.ledger.published += 1
            else:
                ack = await publish_sure(w.js, subjects.SUBMIT, h.data, f"chaos-hostile:{i}")
                w.ledger.invalid[ack.seq] = h.data
            kinds[h.kind] = kinds.get(h.kind, 0) + 1
            if i % w.profile.good_every == 0:
                req = next(good)
                await publish_good(w.js, w.ledger, req)
                await publish_good(w.js, w.ledger, req, msg_id=f"chaos-again:{req.batch_id}")

    await asyncio.gather(*(one(i, h) for i, h in enumerate(stream)))
    w.figures["last_publish"] = time.monotonic()
    w.figures["hostile_kinds"] = kinds
    w.faults["hostile_messages"] = sum(n for k, n in kinds.items() if k != "valid")
    w.faults["hostile_valid_batches"] = kinds.get("valid", 0)
    await drain(w)


def _accepted(h: hostile.Hostile) -> Accepted:
    return Accepted(h.batch_id, h.model, list(h.items), whole_batch_dead=h.items_object)


async def duplicates(w: World) -> None:
    """Every good message published twice: the same id again, and a copy under another id."""
    await w.pods()
    reqs = _batches(w, "d", w.profile.batches)
    early, late = reqs[: len(reqs) // 2], reqs[len(reqs) // 2:]
    for req in reqs:
        await publish_good(w.js, w.ledger, req)
        assert not await publish_good(w.js, w.ledger, req), "the duplicate window kept a copy"
        if req in early:
            await publish_good(w.js, w.ledger, req, msg_id=f"chaos-again:{req.batch_id}")
    w.fault("same_id_copies", len(reqs))
    w.fault("concurrent_copies", len(early))
    await finished_at_least(w, len(reqs), timeout=w.profile.drain_timeout)
    for req in late:  # a copy of a batch already finished
        await publish_good(w.js, w.ledger, req, msg_id=f"chaos-again:{req.batch_id}")
    w.fault("late_copies", len(late))
    w.figures["last_publish"] = time.monotonic()
    await drain(w)


SHARDED = {"BATCHYARD_MAX_JOB_TOKENS": "4000"}  # a batch of 200 such items is 3 shards


async def lost_creates(w: World) -> None:
    """20% of accepted creates answer 503 after making the job; some batches shard."""
    await w.emulator.set_faults(create_lost_rate=0.2)
    await w.pods(**SHARDED)
    reqs = _batches(w, "l", w.profile.batches)
    reqs += [good_batch(f"lbig{i}", w.rng, 200, n=200) for i in range(3)]
    await _publish(w, reqs)
    await drain(w)
    w.faults["lost_creates"] += (await w.emulator.state())["injected"].get("lost_create", 0)
    await w.emulator.set_faults(job_pending_s=0.5, job_running_s=1.0)


async def jobs_deleted(w: World) -> None:
    """Jobs deleted through the API while they wait or run: their items go round."""
    await w.emulator.set_faults(job_pending_s=1.0, job_running_s=3.0)
    await w.pods(BATCHYARD_POLL_INTERVAL="1s", **SHARDED)
    reqs = _batches(w, "j", w.profile.batches)
    reqs += [good_batch(f"jbig{i}", w.rng, 200, n=200) for i in range(2)]
    await _publish(w, reqs)
    client = genai.Client(api_key=w.stack.key, http_options={"base_url": w.emulator.url})
    for _ in range(max(3, len(reqs) // 8)):
        await asyncio.sleep(1.0)
        live = [j["name"] for j in (await w.emulator.state())["jobs"]
                if j["state"] in ("BATCH_STATE_PENDING", "BATCH_STATE_RUNNING")]
        if live:
            await client.aio.batches.delete(name=w.rng.choice(live))
            w.fault("job_deleted")
    await drain(w)


async def quota_wait(w: World) -> None:
    """Admission full for the whole run (2 jobs at a time, 4 s each): the pods wait
    without filling BATCH with held copies."""
    await w.emulator.set_faults(job_pending_s=0.5, job_running_s=4.0)
    await w.pods(BATCHYARD_MAX_ACTIVE_JOBS="2")
    reqs = _batches(w, "q", w.profile.batches)
    await _publish(w, reqs)
    w.fault("admission_full")
    await drain(w)
    counts = await subject_counts(w.js, defs.BATCH)
    # Each job that ends lets each waiting submit pod take one more look (a copy at most).
    w.figures["batch_submit_messages"] = counts.get(subjects.SUBMIT, 0)
    submit_pods = sum(1 for roles in POD_ROLES if "submit" in roles)
    w.figures["batch_submit_bound"] = len(reqs) * (1 + submit_pods) + 20
    await w.emulator.set_faults(job_pending_s=0.5, job_running_s=1.0)


async def pg_down_drain(w: World) -> None:
    """The key expires and batches park; PostgreSQL is down while the new key's drain runs."""
    await w.pods()
    await w.emulator.set_key(w.stack.key, "expired")
    w.fault("key_expired")
    reqs = _batches(w, "pd", w.profile.batches, max_items=20)
    await _publish(w, reqs)
    await w.until(lambda: _ge(_parked(w), len(reqs) // 2), 90)
    await w.pg.stop()
    w.fault("postgres_stop")
    await _rotate(w, "AIzaSyChaosKeyAfterPgDown000000000000001")
    await asyncio.sleep(15)  # the drain's first replays fail and back off
    await w.pg.start()
    w.mark()
    await drain(w)


SCENARIOS: dict[str, Callable[[World], Awaitable[None]]] = {
    "kill9": kill9,
    "nats_restart": nats_restart,
    "cluster_node": cluster_node,
    "pg_stop": pg_stop,
    "key_rotation": key_rotation,
    "emulator_faults": emulator_faults,
    "hostile_stream": hostile_stream,
    "duplicates": duplicates,
    "lost_creates": lost_creates,
    "jobs_deleted": jobs_deleted,
    "quota_wait": quota_wait,
    "pg_down_drain": pg_down_drain,
}
OPTIONS: dict[str, dict[str, object]] = {
    "cluster_node": {"cluster": True},
    "key_rotation": {"job_running_s": 3.0},
}
