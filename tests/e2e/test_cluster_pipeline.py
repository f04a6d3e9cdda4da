"""The whole pipeline across a 3-node JetStream cluster, one node killed mid-run."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import nats

from consumers.ops import provision
from events import jetstream as defs
from sandbox.cluster import nats_cluster
from tests.conftest import KEY
from tests.harness import Stack, batch, submit, succeeded_at_least, wait_finished


async def test_pipeline_keeps_running_when_a_node_dies(migrated_url: str, emulator: Any,
                                                       tmp_path: Path) -> None:
    """Streams at 3 replicas; a node killed -9 mid-run; every batch embedded, one job each."""
    async with nats_cluster(3) as cluster:
        nc = await nats.connect(servers=cluster.urls, max_reconnect_attempts=-1,
                                reconnect_time_wait=0.2)
        await provision.apply(nc.jetstream(), replicas=3)
        info = await nc.jetstream().stream_info(defs.BATCH)
        assert info.config.num_replicas == 3
        stack = Stack(natsd=SimpleNamespace(url=cluster.url), database_url=migrated_url,  # type: ignore[arg-type]
                      emulator=emulator, key=KEY, tmp=tmp_path)
        stack.key_file.write_text(KEY)
        try:
            await stack.pipeline_pods()
            sizes = {f"c{n}": 12 + n for n in range(20)}
            for bid, n in sizes.items():
                await submit(nc, batch(bid, n, output_dimensionality=8))
            db = await stack.db()
            await succeeded_at_least(db, 3)
            cluster.servers[1].kill()
            assert await wait_finished(stack, len(sizes), timeout=180) == {
                "succeeded": len(sizes)}
            rows = await db.fetch("SELECT batch_id, count(*) AS n FROM batchyard.embeddings "
                                  "GROUP BY batch_id")
            assert {r["batch_id"]: r["n"] for r in rows} == sizes
            names = [j["display_name"] for j in (await emulator.state())["jobs"]]
            assert len(names) == len(set(names))
            assert all(p.proc.returncode is None for p in stack.pods)
            await db.close()
        finally:
            await stack.stop_all()
            await nc.close()
