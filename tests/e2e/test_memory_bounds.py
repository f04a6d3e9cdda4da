"""Memory is bounded whatever the input (CONTRACT §8): an items_object's size is checked
from its info before it is read, and it is read streamed; a results line has a bound;
the online path writes its vectors as each call returns."""

from __future__ import annotations

import tracemalloc
from itertools import pairwise
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import msgspec
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nats.aio.client import Client as NATS

from consumers.batch.inputs import Input, load_items
from consumers.batch.results import Ingest
from events import jetstream as defs
from events import subjects
from events.payloads import (
    DEFAULT_MODEL,
    MAX_INPUT_BYTES,
    MAX_ITEM_LINE_BYTES,
    Dead,
    InvalidMessage,
    Item,
    ItemsReader,
    SubmitRequest,
    decode,
    decode_items_jsonl,
    encode_items_jsonl,
)
from sandbox.emulator import embed
from tests.harness import Stack, batch, stream_messages, submit, wait_finished, wait_for

MIB = 1024 * 1024


def _peak_mib(pid: int) -> float:
    """The process's peak resident set (VmHWM), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmHWM for pid {pid}")


def _cosine(stored: Any, text: str) -> float:
    want = np.asarray(embed.vector(DEFAULT_MODEL, text, len(stored)), dtype=np.float64)
    got = np.asarray(stored, dtype=np.float64)
    return float(got @ want / (np.linalg.norm(got) * np.linalg.norm(want)))


async def _dead(nc: NATS, batch_id: str) -> Dead | None:
    for m in await stream_messages(nc, subjects.DEAD):
        dead = decode(m, Dead)
        if dead.batch_id == batch_id:
            return dead
    return None


async def test_an_oversized_items_object_is_dead_lettered_from_its_info(stack: Stack) -> None:
    """An items_object over 256 MiB is dead-lettered from its object info, never read (the
    pod's peak memory stays far below the object's size); a file-sized object next to it
    is streamed in, goes through a file job, and its results are ingested at 3072 dims."""
    pod = await stack.pod("submit", "poll")
    await stack.started()
    base = _peak_mib(pod.proc.pid)
    nc = await stack.nc()
    store = await nc.jetstream().object_store(defs.BATCH_INPUTS)
    line = b'{"id": "x", "text": "' + b"a" * 1000 + b'"}\n'
    size = (MAX_INPUT_BYTES // len(line) + 1024) * len(line)
    await store.put("huge.jsonl", line * (size // len(line)))
    items = [Item(f"f-{i}", f"{i} {'y' * 4000}") for i in range(300)]  # over 1 MiB: a file
    await store.put("fine.jsonl", encode_items_jsonl(items))
    await submit(nc, SubmitRequest(batch_id="huge", items_object="huge.jsonl"))
    await submit(nc, SubmitRequest(batch_id="fine", items_object="fine.jsonl"))
    dead = await wait_for(lambda: _dead(nc, "huge"), 60, what="the huge batch dead-lettered")
    assert dead.reason == "invalid_message" and dead.error is not None
    assert str(size) in dead.error.message and str(MAX_INPUT_BYTES) in dead.error.message
    assert _peak_mib(pod.proc.pid) - base < 128  # the object itself is 257 MiB
    assert await wait_finished(stack, 1, timeout=120) == {"succeeded": 1}
    db = await stack.db()
    rows = await db.fetch("SELECT item_id, embedding FROM batchyard.embeddings")
    await db.close()
    texts = {i.id: i.text for i in items}
    assert len(rows) == len(items)
    for r in rows:
        assert len(r["embedding"]) == 3072 and _cosine(r["embedding"], texts[r["item_id"]]) > 0.999
    jobs = (await stack.emulator.state())["jobs"]
    assert [bool(j["input_file"]) for j in jobs] == [True]
    await nc.close()


async def test_an_items_object_is_read_as_its_bytes_say(nc: NATS) -> None:
    """Streamed in chunks, an object gives the items and errors reading it whole gives:
    lines across chunk boundaries, CRLF split between chunks, blank lines, a bad line."""
    store = await nc.jetstream().object_store(defs.BATCH_INPUTS)
    app: Any = SimpleNamespace(inputs=store,
                               kept=await nc.jetstream().object_store(defs.BATCH_KEPT))
    chunk = 128 * 1024  # the object store's chunk size
    long = [Item(f"l{i}", "z" * 30_000) for i in range(20)]
    crlf = b'{"id": "a", "text": "t"}'
    crlf += b" " * (chunk - len(crlf) - 1) + b'\r\n{"id": "b", "text": "u"}\r\n\n'
    cases = {
        "long.jsonl": encode_items_jsonl(long),
        "crlf.jsonl": crlf,
        "bad.jsonl": encode_items_jsonl(long) + b'{"id": "c", "text": "\xc3"}\n',
        "dup.jsonl": b'{"id": "a", "text": "t"}\n' * 2,
        "blank.jsonl": b"\n\n",
    }
    for name, data in cases.items():
        await store.put(name, data)
        req = SubmitRequest(batch_id="b", items_object=name)
        try:
            want: list[Item] | str = decode_items_jsonl(data)
        except InvalidMessage as exc:
            want = exc.reason
        try:
            got: list[Item] | str = await load_items(app, req)
        except InvalidMessage as exc:
            got = exc.reason
        assert got == want, name
    with pytest.raises(InvalidMessage, match="no object"):
        await load_items(app, SubmitRequest(batch_id="b", items_object="absent.jsonl"))


_LINE = b'{"id": "a", "text": "t"}'
_OBJECTS = [
    _LINE + b"\r\n" + _LINE.replace(b'"a"', b'"b"') + b"\r\n\r\n",
    _LINE + b"\r" + _LINE.replace(b'"a"', b'"b"') + b"\r\r" + _LINE.replace(b'"a"', b'"c"'),
    b"\n\r\n" + _LINE + b"\n\n" + b'{"id": "b", "text": "\xc3"}\n' + _LINE,
    _LINE + b"\n" + _LINE + b"\n",
    _LINE + b"\n" + b'{"id": "b", "text": "' + b"u" * MAX_ITEM_LINE_BYTES + b'"}\n',
    b"\r\n\r",
]


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(_OBJECTS), st.lists(st.integers(0, 2**20), max_size=6))
def test_an_object_read_in_any_chunks_reads_as_read_whole(data: bytes, cuts: list[int]) -> None:
    """Lines split across chunks anywhere (CRLF and lone CRs included) give the items, or
    the error with its line number, that reading the whole object gives."""
    def outcome(chunks: list[bytes] | None) -> list[Item] | str:
        reader = ItemsReader()
        try:
            if chunks is None:
                return decode_items_jsonl(data)  # bytes.splitlines over the whole
            for chunk in chunks:
                reader.feed(chunk)
            return reader.items()
        except InvalidMessage as exc:
            return exc.reason

    at = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    assert outcome([data[a:b] for a, b in pairwise(at)]) == outcome(None)


class _Store:
    def __init__(self) -> None:
        self.rows: dict[str, np.ndarray] = {}

    async def write_embeddings(self, model: str, batch_id: str,
                               rows: list[tuple[str, np.ndarray]], normalize: bool,
                               **columns: object) -> None:
        self.rows.update(rows)

    async def delete_embeddings(self, model: str, batch_id: str, ids: list[str]) -> None:
        for i in ids:
            self.rows.pop(i, None)


def _line(key: str, values: list[float]) -> bytes:
    return msgspec.json.encode({"key": key, "response": {"embedding": {"values": values}}})


@pytest.mark.parametrize("ends", ["newline", "end of file"])
async def test_a_results_line_past_its_bound_fails_its_item_and_the_rest_go_on(ends: str) -> None:
    """A 64 MiB results line (ended by a newline, or by the end of the file) is dropped as
    it comes: its item fails INVALID_RESULT (its key read from the line's start), the lines
    around it are stored, and the parser never holds more than a few MiB."""
    items = [Item(f"i{k}", f"text {k}") for k in range(3)]
    inp = Input(SubmitRequest(batch_id="b", items=items, output_dimensionality=4), items)
    app: Any = SimpleNamespace(store=_Store(), settings=SimpleNamespace(normalize=True))
    ingest = Ingest(app, inp)
    filler = b"0.125, " * (MIB // 7)
    tracemalloc.start()
    try:
        await ingest.feed(_line("i0", [1, 2, 3, 4]) + b'\n{"key": "i1", "response": '
                          b'{"embedding": {"values": [')
        for _ in range(64):
            await ingest.feed(filler)
        if ends == "newline":
            await ingest.feed(b"1]}}}\n" + _line("i2", [4, 3, 2, 1]) + b"\n")
        await ingest.finish()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * MIB
    assert ingest.failures["i1"].status == "INVALID_RESULT"
    assert "i1" not in app.store.rows and "i0" in app.store.rows
    if ends == "newline":
        assert ingest.embedded == 2 and "i2" in app.store.rows and set(ingest.failures) == {"i1"}
    else:
        assert ingest.failures["i2"].status == "RESULT_MISSING"


async def test_an_online_batch_of_thousands_stays_in_bounded_memory(stack: Stack) -> None:
    """5,000 items online at 3072 dims (as the Batch API's fallback may send a whole
    batch): every vector is stored, and the pod's peak memory grows by far less than the
    ~470 MiB those vectors take as Python floats (each call's are written as it returns)."""
    pod = await stack.pod("submit", BATCHYARD_ONLINE_THRESHOLD="10000")
    await stack.started()
    base = _peak_mib(pod.proc.pid)
    nc = await stack.nc()
    req = batch("wide", 5000)
    await submit(nc, req)
    assert await wait_finished(stack, 1, timeout=240) == {"succeeded": 1}
    grown = _peak_mib(pod.proc.pid) - base
    db = await stack.db()
    assert await db.fetchval("SELECT count(*) FROM batchyard.embeddings "
                             "WHERE dims = 3072") == 5000
    await db.close()
    await nc.close()
    print(f"online 5000 x 3072: peak RSS grew by {grown:.0f} MiB (from {base:.0f} MiB)")
    assert grown < 200, f"peak RSS grew by {grown:.0f} MiB"


async def test_a_call_failing_midway_keeps_the_vectors_of_finished_calls(stack: Stack) -> None:
    """The key is revoked while an online batch of 20 calls runs: the auth error still
    reaches the runtime (the batch is parked), and every call that had finished has its
    vectors stored, whole calls only, each on its own item."""
    await stack.emulator.set_faults(latency_ms=500)
    await stack.pod("submit", BATCHYARD_ONLINE_THRESHOLD="10000")
    await stack.started()
    nc = await stack.nc()
    req = batch("midway", 2000, output_dimensionality=16)
    await submit(nc, req)

    async def calls() -> bool:
        made = (await stack.emulator.state())["calls"].get(stack.key, {})
        return made.get("models.batchEmbedContents", 0) >= 8  # so four have finished

    await wait_for(calls, 60, every=0.05, what="eight online calls")
    await stack.emulator.set_key(stack.key, "revoked")
    db = await stack.db()
    await wait_for(lambda: db.fetchval("SELECT status = 'auth_failed' FROM batchyard.batches "
                                       "WHERE batch_id = 'midway'"), 60, what="parked")
    rows = await db.fetch("SELECT item_id, embedding FROM batchyard.embeddings")
    await db.close()
    await nc.close()
    texts = {i.id: i.text for i in req.items or []}
    stored = {r["item_id"]: r["embedding"] for r in rows}
    assert 400 <= len(stored) < 2000
    finished = {int(k.rsplit("-", 1)[1]) // 100 for k in stored}
    assert set(stored) == {f"midway-{n}" for c in finished for n in range(100 * c, 100 * c + 100)}
    for item_id, vector in stored.items():
        assert _cosine(vector, texts[item_id]) > 0.999, item_id
