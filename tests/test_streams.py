"""`streams apply|export` over a real nats-server."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import nats
from nats.aio.client import Client as NATS
from nats.js.api import AckPolicy, RetentionPolicy, StorageType

from consumers.ops import provision
from events import jetstream as defs
from sandbox.natsd import NatsServer

ROOT = Path(__file__).resolve().parents[1]


async def test_apply_twice_changes_nothing_the_second_time(natsd: NatsServer) -> None:
    """A second apply finds everything in place and changes nothing."""
    nc = await nats.connect(natsd.url)
    try:
        first = await provision.apply(nc.jetstream())
        assert len(first) == len(defs.streams()) + len(defs.CONSUMERS)
        assert await provision.apply(nc.jetstream()) == []
    finally:
        await nc.close()


async def test_apply_from_three_processes_at_once(natsd: NatsServer) -> None:
    """Three `batchyard streams apply` processes at once leave one correct set."""
    env = {"NATS_URL": natsd.url, "PATH": str(Path(sys.executable).parent)}
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-m", "consumers", "streams", "apply", env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        for _ in range(3)
    ]
    results = [await p.communicate() for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], results
    nc = await nats.connect(natsd.url)
    try:
        js = nc.jetstream()
        names = sorted([s.config.name for s in await js.streams_info()])
        assert names == sorted(c.name for c in defs.streams())
        assert await provision.apply(js) == []
        for consumer in defs.CONSUMERS:
            assert (await js.consumer_info(consumer.stream, consumer.name)).config.durable_name
    finally:
        await nc.close()


async def test_settings_read_back_from_server(nc: NATS) -> None:
    """Every stream and consumer setting of CONTRACT §4 is what the server holds."""
    js = nc.jetstream()
    batch = (await js.stream_info("BATCH")).config
    assert batch.retention == RetentionPolicy.LIMITS and batch.storage == StorageType.FILE
    assert batch.max_age == 7 * 24 * 3600 and batch.duplicate_window == 120
    assert sorted(batch.subjects or []) == [
        "batch.completed", "batch.dead", "batch.poll", "batch.submit"]
    parked = (await js.stream_info("BATCH_PARKED")).config
    assert parked.subjects == ["batch.auth_failed"] and not parked.max_age
    assert parked.retention == RetentionPolicy.LIMITS and parked.storage == StorageType.FILE
    key = (await js.stream_info("KEY")).config
    assert key.max_msgs_per_subject == 100 and key.storage == StorageType.FILE
    submit = (await js.consumer_info("BATCH", "submit")).config
    assert submit.ack_policy == AckPolicy.EXPLICIT and submit.ack_wait == 60
    assert submit.max_deliver == 8 and submit.filter_subject == "batch.submit"
    assert not submit.backoff
    poll = (await js.consumer_info("BATCH", "poll")).config
    assert poll.ack_wait == 60 and poll.max_deliver == -1 and not poll.backoff
    for stream, name, subject in [("KEY", "key-rotated", "key.rotated"),
                                  ("KEY", "recovery", "key.valid"),
                                  ("BATCH_PARKED", "replay", "batch.auth_failed")]:
        cfg = (await js.consumer_info(stream, name)).config
        assert cfg.filter_subject == subject and cfg.ack_policy == AckPolicy.EXPLICIT
        assert not cfg.backoff
    kv = await js.key_value("KEY_HEALTH")
    await kv.put("current", b"{}")
    assert (await kv.get("current")).value == b"{}"
    await js.key_value("QUOTA")
    store = await js.object_store("BATCH_INPUTS")
    await store.put("x", b"data")
    assert (await store.get("x")).data == b"data"


async def test_changed_setting_is_updated_in_place(nc: NATS) -> None:
    """A stream or consumer changed by hand is put back by apply, keeping its messages."""
    js = nc.jetstream()
    await js.publish("batch.submit", b"{}")
    cfg = (await js.stream_info("BATCH")).config
    cfg.max_age = 3600
    await js.update_stream(cfg)
    submit = defs.SUBMIT.config.evolve(max_deliver=3)
    await js.add_consumer("BATCH", submit)
    changed = await provision.apply(js)
    assert changed == ["stream BATCH: updated max_age", "consumer BATCH/submit: updated max_deliver"]
    assert (await js.stream_info("BATCH")).config.max_age == 7 * 24 * 3600
    assert (await js.consumer_info("BATCH", "submit")).config.max_deliver == 8
    assert (await js.stream_info("BATCH")).state.messages == 1


async def test_same_msg_id_is_stored_once(nc: NATS) -> None:
    """The duplicate window drops a re-published Nats-Msg-Id."""
    js = nc.jetstream()
    first = await js.publish("batch.submit", b"{}", headers={"Nats-Msg-Id": "submit:b:0"})
    again = await js.publish("batch.submit", b"{}", headers={"Nats-Msg-Id": "submit:b:0"})
    assert not first.duplicate and again.duplicate and again.seq == first.seq
    assert (await js.stream_info("BATCH")).state.messages == 1


def test_committed_export_equals_code(tmp_path: Path) -> None:
    """deploy/nats/*.json is exactly what `streams export` writes from the code."""
    written = provision.export(tmp_path)
    committed = sorted(p.name for p in (ROOT / "deploy" / "nats").glob("*.json"))
    assert committed == sorted(p.name for p in written)
    for path in written:
        assert json.loads(path.read_text()) == json.loads(
            (ROOT / "deploy" / "nats" / path.name).read_text()), path.name
