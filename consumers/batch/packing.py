"""Packing (CONTRACT §12): small batches share one job, so that the Batch API's job
count carries tokens rather than batches.

A small batch joins the open pack of its model, dims and task type, recorded in
PostgreSQL, and its message is acked. A pack is sealed when the next batch would not fit
or BATCHYARD_PACK_WAIT after it opened; the submit role's sealer then takes one slot,
creates one job whose requests are keyed `<batch_id>/<item_id>`, and hands it to poll
as one `batch.poll` carrying `pack`. When the job ends each member finishes as if the
job had been its own.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import asyncpg
import structlog
from nats.js.errors import NotFoundError

from consumers import failpoints
from consumers.app import App
from consumers.batch import kept, letters, reuse
from consumers.batch.inputs import Input
from consumers.errors import AuthError, PermanentError
from consumers.status import PACKED, Status
from events import jetstream as defs
from events import subjects
from events.payloads import ErrorDetail, Item, SubmitRequest
from events.publisher import publish

log = structlog.get_logger("batchyard.packing")
# The Batch API's own bound on requests in one job is far above this; the bound keeps one
# pack's input, held whole while its job is created, within a pod's memory.
MAX_PACK_ITEMS = 100_000
LOAD_AT_ONCE = 32


@dataclass(frozen=True)
class Member:
    batch_id: str
    attempt: int
    inp: Input  # the attempt as sent
    status: Status
    job_name: str | None


def eligible(app: App, inp: Input, *, alone: bool) -> bool:
    """A batch for the Batch API estimated at most half a job (larger ones go alone, and
    so does one whose job failed whole before: another member may have been the cause)."""
    s = app.settings
    return (s.pack_wait > 0 and not alone and len(inp.items) > s.online_threshold
            and 2 * inp.est_tokens() <= s.max_job_tokens)


async def join(app: App, inp: Input) -> str:
    req = inp.request
    pack_id = await app.store.packs.join(
        req.batch_id, req.attempt, inp.model, inp.dims, req.task_type, len(inp.items),
        inp.est_tokens(), app.settings.max_job_tokens, MAX_PACK_ITEMS)
    log.info("pack.joined", pack=pack_id, items=len(inp.items))
    return pack_id


async def members(app: App, pack_id: str) -> list[Member]:
    """The pack's members still on the attempt they joined with (a batch re-driven or
    cancelled meanwhile is left out)."""
    rows = [r for r in await app.store.packs.member_rows(pack_id)
            if r["attempt"] == r["joined_attempt"] and r["status"] in PACKED]
    out: list[Member] = []
    for at in range(0, len(rows), LOAD_AT_ONCE):  # a round trip each, a few in flight
        some = rows[at:at + LOAD_AT_ONCE]
        loaded = await asyncio.gather(*(reuse.load(app, r) for r in some))
        out += [Member(r["batch_id"], r["attempt"], inp, r["status"], r["job_name"])
                for r, inp in zip(some, loaded, strict=True)]
    return out


def combined(found: list[Member]) -> Input:
    """One Input of every member's items, keyed `<batch_id>/<item_id>`."""
    first = found[0].inp.request
    items: list[Item] = []
    shas: list[bytes] = []
    for m in found:
        items += [Item(f"{m.batch_id}/{i.id}", i.text) for i in m.inp.items]
        shas += m.inp.text_shas
    # items_object stands in for the items: a pack may hold more than a message allows.
    req = SubmitRequest(batch_id=found[0].batch_id, items_object="pack", model=first.model,
                        task_type=first.task_type,
                        output_dimensionality=first.output_dimensionality)
    return Input(req, items, shas=shas, routed=True)


def split(failures: dict[str, ErrorDetail], batch_id: str) -> dict[str, ErrorDetail]:
    """One member's failures, under its own item ids."""
    prefix = batch_id + "/"
    return {k[len(prefix):]: v for k, v in failures.items() if k.startswith(prefix)}


async def refused(app: App, pack_id: str, found: list[Member], error: PermanentError) -> None:
    """The Batch API refuses the pack's job: each member goes round on its own (its
    job_failures counted), from its own batch.submit message."""
    log.warning("pack.refused", pack=pack_id, error=error.message)
    await app.store.packs.finished(pack_id, "failed")
    for m in found:
        if (own := await _message(app, m)) is None:
            continue
        row, _, data = own
        await app.store.move(m.batch_id, "pending_submission", on_attempt=m.attempt,
                             from_="submitting", last_error=error.message,
                             job_failures=int(row["job_failures"]) + 1)
        await publish(app.js, subjects.SUBMIT, data, f"unpacked:{pack_id}:{m.batch_id}")


async def key_refused(app: App, pack_id: str, found: list[Member], error: AuthError) -> None:
    """The pack's job cannot be created for a bad key: each member's own batch.submit is
    parked (CONTRACT §12), and its replay joins a new pack.

    The pack ends first: a member replayed while the others are being parked must not
    join it again. A sealer stopped in between leaves members `submitting` in an ended
    pack with no job, which `park_left` parks on the next round."""
    log.warning("pack.key_refused", pack=pack_id, error=error.message)
    await app.store.packs.finished(pack_id, "cancelled")
    failpoints.hit("pack.before_parks")
    await _park_each(app, found, error)


async def park_left(app: App, pack_id: str) -> None:
    """Members an ended pack with no job left `submitting` (its sealer stopped while
    parking them): parked as it would have parked them."""
    left = [m for m in await members(app, pack_id) if m.status == "submitting"]
    log.warning("pack.members_left", pack=pack_id, batches=len(left))
    await _park_each(app, left, AuthError(
        f"pack {pack_id} was refused for a bad key", status="KEY_MARKED_INVALID"))


async def _park_each(app: App, found: list[Member], error: AuthError) -> None:
    own = []
    for m in found:
        if (got := await _message(app, m)) is not None:
            own.append((m.batch_id, m.attempt, got[1], got[2]))
    await letters.park_members(app, own, error)


async def _message(app: App, m: Member) -> tuple[asyncpg.Record, int, bytes] | None:
    """A member's row, and its own batch.submit (its sequence and data) from BATCH or,
    once aged out there, from BATCH_KEPT."""
    row = await app.store.get(m.batch_id)
    if row is None or row["attempt"] != m.attempt or row["input_seq"] is None:
        return None
    seq = int(row["input_seq"])
    try:
        return row, seq, (await app.js.get_msg(defs.BATCH, seq)).data or b""
    except NotFoundError:
        if (copy := await kept.message(app, seq)) is None:
            log.error("pack.member_lost", batch_id=m.batch_id, seq=seq)
            return None
        return row, seq, copy
