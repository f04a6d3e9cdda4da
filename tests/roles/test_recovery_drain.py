"""Recovery goes on until nothing is parked while the key is valid, whatever fails on the
way: PostgreSQL down during the drain, a recovery pod killed between moving rows and
publishing their replays."""

from __future__ import annotations

import asyncio

from events import jetstream as defs
from sandbox.pg import PostgresServer
from tests.conftest import KEY
from tests.harness import Stack, batch, statuses, submit, wait_finished, wait_for
from tests.keys import NEW_KEY, n_parked, parked, rotate

BATCHES = 12


async def _park_all(stack: Stack) -> None:
    await stack.emulator.set_key(KEY, "expired")
    await stack.emulator.set_key(NEW_KEY, "valid")
    await stack.pod("submit", "poll")
    await stack.pod("key-health")
    nc = await stack.nc()
    for n in range(BATCHES):
        await submit(nc, batch(f"d{n}", 20))
    await nc.close()
    await wait_for(lambda: n_parked(stack, BATCHES), 90, what="all parked")


async def test_postgres_down_during_the_drain_replays_everything(
        stack: Stack, pg: PostgresServer) -> None:
    await _park_all(stack)
    await stack.pod("recovery")
    await stack.started()
    await pg.stop()
    await rotate(stack, NEW_KEY)
    # Long enough that every replay's first tries fail and the drain's own sweeps are over.
    await asyncio.sleep(15)
    await pg.start()
    assert await wait_finished(stack, BATCHES, timeout=120) == {"succeeded": BATCHES}
    assert await parked(stack) == 0
    names = [j["display_name"] for j in (await stack.emulator.state())["jobs"]]
    assert len(names) == len(set(names)) == BATCHES
    assert "replay.failed" in stack.logs()


async def test_recovery_killed_between_rows_and_replays_leaves_nothing_behind(
        stack: Stack) -> None:
    nc = await stack.nc()
    # Redelivered soon when unacked; key.valid itself keeps its minute-long ack wait, so
    # only key-health's re-announcement can bring the drain back in time.
    await nc.jetstream().add_consumer(defs.REPLAY.stream,
                                      defs.REPLAY.config.evolve(ack_wait=3.0))
    await nc.close()
    await _park_all(stack)
    doomed = await stack.pod("recovery", BATCHYARD_FAILPOINTS="replay.after_rows")
    await stack.started()
    await rotate(stack, NEW_KEY)
    await asyncio.wait_for(doomed.proc.wait(), 60)
    db = await stack.db()
    moved = await statuses(db)
    assert moved.get("pending_submission"), moved  # rows moved, no replay published
    await stack.pod("recovery")
    assert await wait_finished(stack, BATCHES, timeout=40) == {"succeeded": BATCHES}
    assert await parked(stack) == 0
    await db.close()


async def test_a_pod_whose_key_file_lags_the_rotation_parks_on_its_last_delivery(
        stack: Stack) -> None:
    """Its key is expired while KEY_HEALTH knows the new one valid: it retries with the key
    it has, and on the submit consumer's last delivery parks instead of dead-lettering;
    the parked message is announced again and embedded by a pod with the new key."""
    await stack.emulator.set_key(KEY, "expired")
    await stack.emulator.set_key(NEW_KEY, "valid")
    stack.key_file.write_text(NEW_KEY + "\n")
    await stack.pod("key-health")
    await stack.pod("recovery")
    old = stack.tmp / "lagging.key"
    old.write_text(KEY + "\n")
    lagging = await stack.pod("submit", GEMINI_API_KEY_FILE=str(old))
    await stack.started()
    nc = await stack.nc()
    await submit(nc, batch("lag", 20))
    await nc.close()
    # Eight deliveries with the backoff between them (1 2 4 8 16 30 60 s, jittered).
    await wait_for(lambda: n_parked(stack, 1), 240, what="parked on its last delivery")
    db = await stack.db()
    assert await statuses(db) == {"auth_failed": 1}
    assert '"deliveries_exhausted"' not in stack.logs()
    await lagging.terminate()
    await stack.pod("submit", "poll")
    assert await wait_finished(stack, 1, timeout=60) == {"succeeded": 1}
    await db.close()
