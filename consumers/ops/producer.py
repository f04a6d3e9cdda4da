"""`batchyard publish`: the reference producer for indexers."""

from __future__ import annotations

import argparse

import msgspec

from consumers.batch.inputs import MESSAGE_ITEMS_MAX_BYTES
from consumers.connect import connect_nats
from consumers.settings import Settings
from events import jetstream as defs
from events import subjects
from events.payloads import (
    DEFAULT_MODEL,
    InvalidMessage,
    SubmitRequest,
    decode,
    decode_items_jsonl,
    encode,
)
from events.publisher import publish


def build(items_jsonl: bytes, batch_id: str, *, model: str | None = None,
          task_type: str | None = None, output_dimensionality: int | None = None,
          source: str | None = None, items_object: str | None = None) -> SubmitRequest:
    """A validated batch.submit; `items_object` set means the items live in the store."""
    body: dict[str, object] = {"batch_id": batch_id, "model": model or DEFAULT_MODEL}
    for k, v in (("task_type", task_type), ("output_dimensionality", output_dimensionality),
                 ("source", source)):
        if v is not None:
            body[k] = v
    if items_object is not None:
        body["items_object"] = items_object
    else:
        body["items"] = msgspec.to_builtins(decode_items_jsonl(items_jsonl))
    return decode(encode(body), SubmitRequest)


async def publish_file(settings: Settings, args: argparse.Namespace) -> str:
    """Publish FILE.jsonl as one batch; above the payload limit, via BATCH_INPUTS."""
    data = args.file.read_bytes()
    options = {"model": args.model, "task_type": args.task_type,
               "output_dimensionality": args.output_dimensionality, "source": args.source}
    items = decode_items_jsonl(data)  # validate before anything is stored
    nc = await connect_nats(settings, name="batchyard-publish", max_reconnect_attempts=3)
    try:
        js = nc.jetstream()
        if len(data) <= MESSAGE_ITEMS_MAX_BYTES:
            req = build(data, args.batch_id, **options)
            where = "inline"
        else:
            name = f"input/{args.batch_id}.jsonl"
            store = await js.object_store(defs.BATCH_INPUTS)
            await store.put(name, data)
            req = build(b"", args.batch_id, items_object=name, **options)
            where = f"object {name}"
        ack = await publish(js, subjects.SUBMIT, req, subjects.submit_id(args.batch_id, 0))
    finally:
        await nc.close()
    dup = " (duplicate, already published)" if ack.duplicate else ""
    return f"published batch {args.batch_id}: {len(items)} items {where}, seq {ack.seq}{dup}"


__all__ = ["InvalidMessage", "build", "publish_file"]
