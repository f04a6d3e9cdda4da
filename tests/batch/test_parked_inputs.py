"""A parked batch keeps what its replay needs for as long as it is parked: BATCH's
batch.submit messages and the BATCH_INPUTS objects purged while batches wait for a key
(as 7 days of max_age would) lose nothing; the copies go once their batches finish."""

from __future__ import annotations

from typing import Any

from events import jetstream as defs
from events import subjects
from events.payloads import Item, SubmitRequest, encode_items_jsonl
from tests.conftest import KEY
from tests.harness import Stack, batch, statuses, submit, wait_finished, wait_for
from tests.keys import NEW_KEY, everything, n_parked, rotate


async def _objects(nc: Any, bucket: str) -> list[str]:
    store = await nc.jetstream().object_store(bucket)
    try:
        return [i.name for i in await store.list(ignore_deletes=True)]
    except Exception:  # nats-py raises NotFoundError for an empty store
        return []


async def test_inputs_purged_while_parked_are_replayed_from_the_kept_copies(
        stack: Stack) -> None:
    await stack.emulator.set_faults(job_pending_s=1, job_running_s=600)
    await stack.emulator.set_key(NEW_KEY, "valid")
    await everything(stack, BATCHYARD_FILE_SWEEP_INTERVAL="2s")
    await stack.started()
    nc = await stack.nc()
    js = nc.jetstream()
    inputs = await js.object_store(defs.BATCH_INPUTS)
    texts: dict[str, int] = {}

    async def by_object(batch_id: str, n: int) -> SubmitRequest:
        items = [Item(f"{batch_id}-{i}", f"{batch_id} item {i}") for i in range(n)]
        await inputs.put(f"{batch_id}.jsonl", encode_items_jsonl(items))
        texts[batch_id] = n
        return SubmitRequest(batch_id=batch_id, items_object=f"{batch_id}.jsonl")

    # Parked at the poll stage: their jobs run while the key expires.
    for req in (batch("poll-inline", 30), await by_object("poll-object", 25)):
        texts.setdefault(req.batch_id, 30)
        await submit(nc, req)
    db = await stack.db()
    await wait_for(lambda: db.fetchval(
        "SELECT count(*) = 2 FROM batchyard.batches WHERE status = 'submitted'"), 60,
        what="2 jobs running")
    await stack.emulator.set_key(KEY, "expired")
    await wait_for(lambda: n_parked(stack, 2), 60, what="2 parked polls")
    # Parked at the submit stage: the key is known bad.
    for req in (batch("submit-inline", 20), await by_object("submit-object", 15)):
        texts.setdefault(req.batch_id, 20)
        await submit(nc, req)
    await wait_for(lambda: n_parked(stack, 4), 60, what="4 parked")
    assert await statuses(db) == {"auth_failed": 4}

    # A week passes: BATCH's submits and every BATCH_INPUTS object age out.
    await js.purge_stream(defs.BATCH, subject=subjects.SUBMIT)
    await js.purge_stream(f"OBJ_{defs.BATCH_INPUTS}")
    assert not await _objects(nc, defs.BATCH_INPUTS)
    kept = await _objects(nc, defs.BATCH_KEPT)
    assert len(kept) == 4, kept  # the 2 poll-stage submits, the 2 objects

    await rotate(stack, NEW_KEY)
    await wait_for(lambda: db.fetchval(
        "SELECT count(*) = 4 FROM batchyard.batches WHERE status = 'submitted'"), 60,
        what="4 replayed, their jobs running")
    await stack.emulator.advance(600)
    assert await wait_finished(stack, 4, timeout=120) == {"succeeded": 4}
    rows = dict(await db.fetch(
        "SELECT batch_id, count(*) FROM batchyard.embeddings GROUP BY batch_id"))
    assert rows == texts
    await wait_for(lambda: _gone(nc), 60, what="the kept copies swept")
    await db.close()
    await nc.close()


async def _gone(nc: Any) -> bool:
    return not await _objects(nc, defs.BATCH_KEPT)
