"""A 3-node JetStream cluster runs batchyard's streams at 3 replicas and survives losing a node."""

from __future__ import annotations

import asyncio
import os
import textwrap

import nats
import pytest
from nats.aio.client import Client as NATS
from nats.errors import Error as NatsError
from nats.js import JetStreamContext

from consumers.ops import provision
from events import jetstream as defs
from events import subjects
from sandbox.cluster import nats_cluster
from tests.harness import alive, interrupted


async def _connect(urls: list[str]) -> NATS:
    return await nats.connect(servers=urls, connect_timeout=2, max_reconnect_attempts=-1,
                              reconnect_time_wait=0.2)


def _body(n: int) -> bytes:
    return f'{{"batch_id":"b{n}","items":[{{"id":"i","text":"t{n}"}}]}}'.encode()


async def _publish(js: JetStreamContext, n: int, *, deadline: float = 30.0) -> tuple[int, bool]:
    """Publish submit message `n` with its Nats-Msg-Id until the stream acknowledges it."""
    body = _body(n)
    headers = {"Nats-Msg-Id": f"submit:b{n}:0"}
    async with asyncio.timeout(deadline):
        while True:
            try:
                ack = await js.publish(subjects.SUBMIT, body, headers=headers, timeout=2)
                return ack.seq, ack.duplicate or False
            except (NatsError, TimeoutError):
                await asyncio.sleep(0.2)


async def _drain_submit(js: JetStreamContext, expected: int, *,
                        deadline: float = 30.0) -> set[bytes]:
    """Fetch from the `submit` durable and ack each message until `expected` distinct have come."""
    sub = await js.pull_subscribe_bind(defs.SUBMIT.name, stream=defs.SUBMIT.stream)
    got: set[bytes] = set()
    try:
        async with asyncio.timeout(deadline):
            while len(got) < expected:
                try:
                    msgs = await sub.fetch(expected - len(got), timeout=2)
                except (NatsError, TimeoutError):
                    continue
                for msg in msgs:
                    await msg.ack_sync(timeout=5)
                    got.add(msg.data)
    finally:
        await sub.unsubscribe()
    return got


async def test_streams_apply_at_three_replicas() -> None:
    """`streams apply --replicas 3` on a 3-node cluster gives every stream 3 replicas and a leader."""
    async with nats_cluster(3) as cluster:
        assert len(cluster.urls) == 3 and cluster.url == ",".join(cluster.urls)
        nc = await _connect(cluster.urls)
        try:
            js = nc.jetstream(timeout=10)
            changed = await provision.apply(js, replicas=3)
            names = [c.name for c in defs.streams(3)]
            assert [line for line in changed if line.startswith("stream ")] == [
                f"stream {name}: created" for name in names]
            for name in names:
                info = await js.stream_info(name)
                assert info.config.num_replicas == 3, name
                assert info.cluster is not None and info.cluster.leader in {
                    s.name for s in cluster.servers}, name
                assert len(info.cluster.replicas or []) == 2, name
            for consumer in defs.CONSUMERS:
                cinfo = await js.consumer_info(consumer.stream, consumer.name)
                assert cinfo.cluster is not None and cinfo.cluster.leader, consumer.name
            assert await provision.apply(js, replicas=3) == []
        finally:
            await nc.close()


async def test_losing_a_node_loses_nothing() -> None:
    """With the BATCH leader killed (-9), publishes go on, duplicates drop, `submit` delivers all."""
    async with nats_cluster(3) as cluster:
        nc = await _connect(cluster.urls)
        try:
            js = nc.jetstream(timeout=10)
            await provision.apply(js, replicas=3)

            first = await _publish(js, 0)
            again = await _publish(js, 0)
            assert first == (1, False) and again == (1, True)
            for n in range(1, 20):
                await _publish(js, n)

            info = await js.stream_info(defs.BATCH)
            assert info.cluster is not None and info.cluster.leader
            victim = cluster.server(info.cluster.leader)
            victim.kill()
            assert victim.proc is not None
            await victim.proc.wait()

            acks = [await _publish(js, n) for n in range(20, 40)]
            assert [seq for seq, _ in acks] == list(range(21, 41))
            assert (await _publish(js, 20))[1], "a retried publish after failover is dropped"

            after = await js.stream_info(defs.BATCH)
            assert after.state.messages == 40
            assert after.cluster is not None and after.cluster.leader != victim.name

            got = await _drain_submit(js, 40)
            assert got == {_body(n) for n in range(40)}
            cinfo = await js.consumer_info(defs.SUBMIT.stream, defs.SUBMIT.name)
            assert cinfo.num_pending == 0 and cinfo.num_ack_pending == 0

            # The node's /healthz is 200 only once its stream replicas have caught up.
            await victim.start()
            await victim.wait_healthy()
            assert victim.running
        finally:
            await nc.close()


async def test_failure_inside_the_block_cleans_up() -> None:
    """An exception in the block stops every node and removes the cluster's directory."""
    with pytest.raises(RuntimeError, match="boom"):
        async with nats_cluster(3) as cluster:
            pids = [s.proc.pid for s in cluster.servers if s.proc]
            root = cluster.servers[0].store_dir.parent
            raise RuntimeError("boom")
    assert len(pids) == 3 and not any(alive(p) for p in pids)
    assert not root.exists()


async def test_ctrl_c_cleans_up() -> None:
    """SIGINT to a process holding a cluster stops every node and removes its directory."""
    script = textwrap.dedent("""
        import asyncio, sys
        from sandbox.cluster import nats_cluster
        async def main():
            async with nats_cluster(3) as c:
                pids = [str(s.proc.pid) for s in c.servers]
                print(*pids, c.servers[0].store_dir.parent, flush=True)
                await asyncio.sleep(60)
        try:
            asyncio.run(main())
        except KeyboardInterrupt:
            sys.exit(130)
    """)
    line = await interrupted(script, 45)
    pids, root = [int(p) for p in line[:3]], line[3]
    assert not any(alive(p) for p in pids)
    assert not os.path.exists(root)
