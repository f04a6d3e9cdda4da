"""Outages of the servers under a running pipeline: nothing lost, nothing duplicated."""

from __future__ import annotations

import asyncio

from sandbox.pg import PostgresServer
from tests.harness import Stack, batch, submit, succeeded_at_least, wait_finished


async def _check_once(stack: Stack, sizes: dict[str, int]) -> None:
    names = [j["display_name"] for j in (await stack.emulator.state())["jobs"]]
    assert len(names) == len(set(names))
    db = await stack.db()
    rows = await db.fetch("SELECT batch_id, count(*) AS n FROM batchyard.embeddings "
                          "GROUP BY batch_id")
    await db.close()
    assert {r["batch_id"]: r["n"] for r in rows} == sizes


async def test_nats_server_restart_mid_run(stack: Stack) -> None:
    """nats-server stopped and restarted mid-run (file storage kept): every batch finishes."""
    await stack.pipeline_pods()
    nc = await stack.nc()
    sizes = {f"n{i}": 15 + i for i in range(30)}
    for bid, n in sizes.items():
        await submit(nc, batch(bid, n, output_dimensionality=8))
    await nc.close()
    db = await stack.db()
    await succeeded_at_least(db, 3)
    await db.close()
    await stack.natsd.stop()
    await asyncio.sleep(3)
    await stack.natsd.start()
    assert await wait_finished(stack, len(sizes), timeout=180) == {"succeeded": len(sizes)}
    await _check_once(stack, sizes)
    assert all(p.proc.returncode is None for p in stack.pods)


async def test_postgres_stopped_for_seconds_mid_run(stack: Stack, pg: PostgresServer) -> None:
    """PostgreSQL down for 6 s mid-run: pods wait it out and every batch finishes once."""
    await stack.pipeline_pods()
    nc = await stack.nc()
    sizes = {f"p{i}": 12 + i for i in range(30)}
    for bid, n in sizes.items():
        await submit(nc, batch(bid, n, output_dimensionality=8))
    db = await stack.db()
    await succeeded_at_least(db, 3)
    await db.close()
    await pg.stop()
    await asyncio.sleep(6)
    await pg.start()
    assert await wait_finished(stack, len(sizes), timeout=180) == {"succeeded": len(sizes)}
    await _check_once(stack, sizes)
    assert all(p.proc.returncode is None for p in stack.pods)
    await nc.close()
