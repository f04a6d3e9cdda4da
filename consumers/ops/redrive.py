"""Operator re-drives: resubmit a batch, retry its failed items, cancel it.

Each is safe to run twice and against a running system: the next attempt's
`batch.submit` has a deterministic Nats-Msg-Id, and rows change only from the state
the command read.
"""

from __future__ import annotations

from consumers.app import App
from consumers.batch import packing, shards
from consumers.batch.inputs import load_input, next_attempt
from consumers.errors import BatchyardError
from consumers.gemini.jobs import TERMINAL
from consumers.status import FINISHED
from events import subjects
from events.payloads import Item
from events.publisher import publish


async def _publish_attempt(app: App, batch_id: str, items: list[Item], what: str,
                           fresh: bool = False) -> str:
    row = await app.store.get(batch_id)
    if row is None:
        return f"no batch {batch_id!r}"
    if row["status"] not in FINISHED:
        return (f"batch {batch_id} is {row['status']} at attempt {row['attempt']}: "
                f"nothing done (only a finished batch can be {what})")
    if row["origin_seq"] is None:
        return f"batch {batch_id} has no recorded input: nothing done"
    inp = await load_input(app, int(row["origin_seq"]))
    if not items:
        items = inp.items
    attempt = int(row["attempt"]) + 1
    if fresh:
        # The attempt's sent items fixed in advance, all of them: reuse copies nothing.
        await app.store.update(batch_id, {"attempt": row["attempt"], "status": row["status"]},
                               sent_attempt=attempt, sent_mask=b"\xff" * (len(items) // 8 + 1))
    req = await next_attempt(app, inp, items, attempt)
    ack = await publish(app.js, subjects.SUBMIT, req, subjects.submit_id(batch_id, attempt))
    await app.store.move(
        batch_id, "pending_submission", on_attempt=row["attempt"], from_=row["status"],
        attempt=attempt, items_total=len(inp.items),
        items_embedded=len(inp.items) - len(items), items_failed=0, items_reused=0,
        completed_at=None,
        job_name=None, input_file=None)
    if ack.duplicate:
        return f"already {what}: batch {batch_id} attempt {attempt} was published before"
    return f"{what}: batch {batch_id} as attempt {attempt} with {len(items)} items"


async def resubmit(app: App, batch_id: str, fresh: bool = False) -> str:
    """Embed every item of a finished batch again, as its next attempt; with `fresh`,
    every item goes to Gemini (no stored vector is copied)."""
    return await _publish_attempt(app, batch_id, [], "re-submitted", fresh)


async def retry_failed(app: App, batch_id: str) -> str:
    """A new attempt with only the items that have no embedding."""
    row = await app.store.get(batch_id)
    if row is None or row["origin_seq"] is None:
        return await _publish_attempt(app, batch_id, [], "retried")
    inp = await load_input(app, int(row["origin_seq"]))
    done = await app.store.embeddings.ids_of(batch_id, inp.model)
    missing = [item for item in inp.items if item.id not in done]
    if not missing:
        return f"batch {batch_id}: every item has its embedding, nothing to retry"
    return await _publish_attempt(app, batch_id, missing, "retried")


async def cancel(app: App, batch_id: str) -> str:
    """Cancel the batch's Gemini job, if any, and mark it cancelled."""
    async with app.store.claim(batch_id) as claimed:
        if not claimed:
            return f"batch {batch_id} is being worked on right now: run the command again"
        row = await app.store.get(batch_id)
        if row is None:
            return f"no batch {batch_id!r}"
        if row["status"] in FINISHED:
            return f"batch {batch_id} is already {row['status']}: nothing done"
        notes = []
        for job in await shards.rows(app, batch_id, int(row["attempt"])):
            if job["state"] in TERMINAL:
                continue
            if job["job_name"]:
                try:
                    await app.gemini.cancel_job(job["job_name"])
                    notes.append(f", job {job['job_name']} cancelled")
                except BatchyardError as exc:
                    notes.append(f", job {job['job_name']} not cancelled ({exc.message})")
            # Its admission slot is free now, and the sweep may take its input file.
            await app.quota.finished(batch_id, int(row["attempt"]), "cancelled",
                                     int(job["shard"]))
        changed = await app.store.move(batch_id, "cancelled", on_attempt=row["attempt"],
                                       from_=row["status"])
    if not changed:
        return f"batch {batch_id} changed meanwhile: nothing done"
    if (pack_id := await app.store.packs.pack_of(batch_id, int(row["attempt"]))) is not None:
        notes.append(await _cancel_pack(app, pack_id))
    return f"cancelled batch {batch_id} (was {row['status']}){''.join(notes)}"


async def _cancel_pack(app: App, pack_id: str) -> str:
    """A pack member cancelled: its results are dropped when the job ends (the poll
    settles live members only); the job itself is cancelled once no member is live."""
    if await packing.members(app, pack_id):
        return f", its pack {pack_id} goes on for the other members"
    pack = await app.store.packs.get(pack_id)
    if pack is None or pack["state"] not in ("pending", "running") or not pack["job_name"]:
        return f", its pack {pack_id} has no running job"
    try:
        await app.gemini.cancel_job(pack["job_name"])
    except BatchyardError as exc:
        return f", pack job {pack['job_name']} not cancelled ({exc.message})"
    return f", pack job {pack['job_name']} cancelled (no member left)"
