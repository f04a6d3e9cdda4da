"""Reuse (CONTRACT §13): a text already embedded is copied, never paid for again.

Before an attempt goes to Gemini, each item whose text has a stored vector for the same
model, dims and task type gets a copy of it, and of the others each distinct text is sent
once. Which items were sent is fixed on the batch row (`sent_mask`) the first time, so
that a retried submit, a lost create's adoption, the shards and the poll all see the
same items.
"""

from __future__ import annotations

import asyncpg
import structlog

from consumers import metrics
from consumers.app import App
from consumers.batch.inputs import Input, load_input
from events.payloads import ErrorDetail, Item

log = structlog.get_logger("batchyard.reuse")

def _mask(inp: Input, sent: list[bool]) -> bytes:
    out = bytearray((len(sent) + 7) // 8)
    for n, on in enumerate(sent):
        if on:
            out[n >> 3] |= 1 << (n & 7)
    return bytes(out)


def view(inp: Input, mask: bytes | None) -> Input:
    """The attempt as sent: the items `mask` marks, and as their duplicates the unmarked
    items with the same text (the others were copied from stored vectors)."""
    if mask is None:
        return inp
    shas = inp.text_shas
    items: list[Item] = []
    sent_shas: list[bytes] = []
    first: dict[bytes, str] = {}
    unsent: list[int] = []
    for n, item in enumerate(inp.items):
        if n >> 3 < len(mask) and mask[n >> 3] >> (n & 7) & 1:
            items.append(item)
            sent_shas.append(shas[n])
            first.setdefault(shas[n], item.id)
        else:
            unsent.append(n)
    dups: dict[str, list[Item]] = {}
    for n in unsent:
        source = first.get(shas[n])
        if source is not None:
            dups.setdefault(source, []).append(inp.items[n])
    return Input(inp.request, items, dups=dups, shas=sent_shas)


async def load(app: App, row: asyncpg.Record) -> Input:
    """The attempt's input at the batch row's `input_seq`, as it was sent."""
    inp = await load_input(app, int(row["input_seq"]))
    fixed = row["sent_attempt"] == row["attempt"]
    return view(inp, row["sent_mask"] if fixed else None)


async def resolve(app: App, inp: Input, row: asyncpg.Record) -> tuple[Input, int]:
    """Copy what is stored and fold duplicate texts: the attempt as it will be sent, and
    how many items that spares. Decided once per attempt (the row keeps it)."""
    req = inp.request
    if row["sent_attempt"] == req.attempt:
        return view(inp, row["sent_mask"]), 0
    if not app.settings.reuse_embeddings or inp.dims is None:
        return inp, 0
    shas = inp.text_shas
    copied = await app.store.embeddings.copy_stored(
        [i.id for i in inp.items], shas, inp.model, inp.dims, req.task_type, req.batch_id)
    seen: set[bytes] = set()
    sent = []
    for item, sha in zip(inp.items, shas, strict=True):
        sent.append(item.id not in copied and sha not in seen)
        if item.id not in copied:
            seen.add(sha)
    mask = _mask(inp, sent)
    await app.store.update(req.batch_id, {"attempt": req.attempt, "status": "submitting"},
                           sent_attempt=req.attempt, sent_mask=mask,
                           items_reused=int(row["items_reused"]) + len(copied))
    if copied:
        metrics.ITEMS_REUSED.inc(len(copied))
        log.info("reuse.copied", items=len(copied), of=len(inp.items))
    return view(inp, mask), len(copied)


async def spread(app: App, inp: Input, failures: dict[str, ErrorDetail]) -> int:
    """Give each duplicate its source item's vector, or its failure; returns the copies."""
    pairs = [(dup.id, source) for source, dups in inp.dups.items() for dup in dups]
    copies = [(d, s) for d, s in pairs if s not in failures]
    for dup, source in pairs:
        if source in failures:
            failures[dup] = failures[source]
    if copies:
        await app.store.embeddings.spread([d for d, _ in copies], [s for _, s in copies],
                                          inp.request.batch_id, inp.model)
        metrics.ITEMS_REUSED.inc(len(copies))
    return len(copies)
