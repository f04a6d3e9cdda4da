"""Inputs kept for parked batches, for as long as they are parked.

A parked message never ages out, but what its replay reads back does: a poll-stage
replay reads the attempt's batch.submit from BATCH, an items_object lives in
BATCH_INPUTS, and both go after 7 days. A key that stays bad for longer (a holiday)
would lose those batches and their paid results. So before a message is parked its
input is copied into the BATCH_KEPT object store, which has no max_age, and read from
there when the original is gone. The poll pods' sweep deletes a copy once its batch has
finished or moved to a later attempt.
"""

from __future__ import annotations

import tempfile

import msgspec
import structlog
from nats.js.api import ObjectMeta
from nats.js.errors import NotFoundError, ObjectNotFoundError
from nats.js.object_store import ObjectStore

from consumers.app import App
from events import jetstream as defs
from events.payloads import PollRequest, Stage, SubmitRequest, decode

log = structlog.get_logger("batchyard.kept")


class Owner(msgspec.Struct, frozen=True):
    """Whose input a copy is (its description): kept while that attempt may replay."""

    batch_id: str
    attempt: int


def message_name(seq: int) -> str:
    return f"message.{seq}"


def object_name(name: str) -> str:
    return f"object.{name}"


async def keep(app: App, data: bytes, stage: Stage, batches: list[str] | None = None) -> None:
    """Copy what the replay of a message (`data`) will read from an ageing stream
    (idempotent); for a pack's poll, what each of its member `batches` will read."""
    if stage == "submit":
        req = decode(data, SubmitRequest)
        if req.items_object is not None:
            await _copy(app, req.items_object, Owner(req.batch_id, req.attempt))
        return
    for batch_id in batches if batches is not None else [decode(data, PollRequest).batch]:
        await _keep_input(app, batch_id)


async def _keep_input(app: App, batch_id: str) -> None:
    """The batch.submit a poll-stage replay reads back (and its items_object)."""
    row = await app.store.get(batch_id)
    if row is None or row["input_seq"] is None:
        return
    owner = Owner(batch_id, int(row["attempt"]))
    seq = int(row["input_seq"])
    try:
        raw = await app.js.get_msg(defs.BATCH, seq)
    except NotFoundError:
        return  # already gone: the replay will say so
    data = raw.data or b""
    await _put(app.kept, message_name(seq), data, owner)
    req = decode(data, SubmitRequest)
    if req.items_object is not None:
        await _copy(app, req.items_object, owner)


async def _put(store: ObjectStore, name: str, data: bytes, owner: Owner) -> None:
    try:
        info = await store.get_info(name)
        if info.size == len(data):
            return
    except (ObjectNotFoundError, NotFoundError):
        pass
    await store.put(name, data, meta=_meta(name, owner))


async def _copy(app: App, name: str, owner: Owner) -> None:
    """Stream the BATCH_INPUTS object `name` into BATCH_KEPT through a temporary file."""
    target = object_name(name)
    try:
        await app.kept.get_info(target)
        return
    except (ObjectNotFoundError, NotFoundError):
        pass
    with tempfile.TemporaryFile() as f:
        try:
            got = await app.inputs.get(name, writeinto=f)
        except (ObjectNotFoundError, NotFoundError):
            return
        if got.data:  # a link: nats-py reads those whole
            f.write(got.data)
        f.seek(0)
        await app.kept.put(target, f, meta=_meta(target, owner))
    log.info("input.kept", object=name)


def _meta(name: str, owner: Owner) -> ObjectMeta:
    return ObjectMeta(name=name, description=msgspec.json.encode(owner).decode())


async def message(app: App, seq: int) -> bytes | None:
    """The kept copy of BATCH message `seq`, if there is one."""
    try:
        return (await app.kept.get(message_name(seq))).data
    except (ObjectNotFoundError, NotFoundError):
        return None


async def sweep_kept(app: App) -> int:
    """Delete copies whose batch finished, is gone, or moved to a later attempt."""
    try:
        listed = await app.kept.list(ignore_deletes=True)
    except NotFoundError:
        return 0  # nothing kept yet
    names, ids, attempts = [], [], []
    for info in listed:
        if info.deleted or not info.description:
            continue
        try:
            owner = msgspec.json.decode(info.description, type=Owner)
        except msgspec.DecodeError:
            continue
        names.append(info.name)
        ids.append(owner.batch_id)
        attempts.append(owner.attempt)
    if not names:
        return 0
    done = [n for n, past in zip(names, await app.store.past(ids, attempts), strict=True)
            if past]
    for name in done:
        try:
            await app.kept.delete(name)
        except (ObjectNotFoundError, NotFoundError):
            pass
    if done:
        log.info("kept.swept", deleted=len(done))
    return len(done)
