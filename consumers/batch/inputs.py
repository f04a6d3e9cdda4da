"""A batch's input: its items, the Batch API request forms, and where it is kept."""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import msgspec
from nats.js.api import ObjectInfo
from nats.js.errors import NotFoundError
from nats.js.errors import ObjectNotFoundError as _ObjectNotFound
from nats.js.object_store import ObjectStore

from consumers.app import App
from consumers.batch import kept
from consumers.errors import PermanentError
from events import jetstream as defs
from events.payloads import (
    MAX_INPUT_BYTES,
    InvalidMessage,
    Item,
    ItemsReader,
    SubmitRequest,
    decode,
    encode_items_jsonl,
)

INLINE_MAX_BYTES = 1024 * 1024
# An input line's worst case: each text byte escaped as \u00XX, plus the line's framing.
JSON_ESCAPE, LINE_FRAMING = 6, 192
# Items of a retry are put in the object store above this, to stay under max_payload.
MESSAGE_ITEMS_MAX_BYTES = 768 * 1024
MAX_LINKS = 4  # object links followed to an items_object's data

# Served models only: text-embedding-004, embedding-001 and gemini-embedding-exp-03-07
# are retired (404), and a model not listed here is checked for no length.
MODEL_DIMS = {"gemini-embedding-001": 3072, "gemini-embedding-2": 3072}


class _Part(msgspec.Struct):
    text: str


class _Content(msgspec.Struct):
    parts: list[_Part]


class _Request(msgspec.Struct, omit_defaults=True):
    content: _Content
    task_type: str | None = None
    output_dimensionality: int | None = None


class _Line(msgspec.Struct):
    key: str
    request: _Request


_encoder = msgspec.json.Encoder()


@dataclass(frozen=True)
class Input:
    """One attempt's request and the items that go to Gemini, in order.

    `dups` are the attempt's items whose text one of `items` already has (CONTRACT §13):
    they are not sent, and get a copy of that item's vector (by its id).
    """

    request: SubmitRequest
    items: list[Item]
    dups: dict[str, list[Item]] = field(default_factory=dict)
    shas: list[bytes] | None = None  # sha256 of each item's text, when already known
    # A pack's (CONTRACT §12): item ids are `<batch_id>/<item_id>`, and results are
    # written to each member batch under its own item ids.
    routed: bool = False

    @property
    def all_items(self) -> list[Item]:
        """The items and their duplicates."""
        return self.items + [d for ds in self.dups.values() for d in ds]

    def part(self, start: int, stop: int) -> Input:
        """Items `start:stop` (a shard), their hashes kept."""
        shas = self.text_shas[start:stop]
        return Input(self.request, self.items[start:stop], shas=shas)

    @property
    def model(self) -> str:
        return self.request.model.removeprefix("models/")

    @property
    def dims(self) -> int | None:
        return self.request.output_dimensionality or MODEL_DIMS.get(self.model)

    def embed_config(self) -> dict[str, Any]:
        config: dict[str, Any] = {}
        if self.request.task_type:
            config["task_type"] = self.request.task_type
        if self.request.output_dimensionality:
            config["output_dimensionality"] = self.request.output_dimensionality
        return config

    def jsonl(self) -> bytes:
        """The input file of a file-sourced job: one `{key, request}` line per item."""
        task, dims = self.request.task_type, self.request.output_dimensionality
        buf = bytearray()
        for item in self.items:
            line = _Line(item.id, _Request(_Content([_Part(item.text)]), task, dims))
            _encoder.encode_into(line, buf, len(buf))
            buf += b"\n"
        return bytes(buf)

    @cached_property
    def _measured(self) -> tuple[int, list[bytes]]:
        # One pass encodes each text once, for its length and its hash both.
        size, shas = 0, []
        for item in self.items:
            data = item.text.encode()
            size += len(data)
            shas.append(hashlib.sha256(data).digest())
        return size, shas

    @cached_property
    def text_bytes(self) -> int:
        """UTF-8 bytes of all texts (once: a submit asks for it many times per batch)."""
        if self.shas is not None and "_measured" not in self.__dict__:
            return sum(len(i.text.encode()) for i in self.items)
        return self._measured[0]

    @property
    def text_shas(self) -> list[bytes]:
        """sha256 of each item's text as UTF-8, in order."""
        return self.shas if self.shas is not None else self._measured[1]

    def est_tokens(self) -> int:
        """UTF-8 bytes of all texts / 4, rounded up (CONTRACT §11)."""
        return -(-self.text_bytes // 4)

    def max_jsonl_bytes(self) -> int:
        """A bound `len(self.jsonl())` never passes, known without encoding anything."""
        return (JSON_ESCAPE * self.text_bytes + sum(len(i.id) for i in self.items)
                + LINE_FRAMING * len(self.items))


async def load_items(app: App, req: SubmitRequest) -> list[Item]:
    """The request's items, from the message or the BATCH_INPUTS object store.

    An object's size is checked from its info before any of it is read (CONTRACT §8);
    it is then read chunk by chunk as it streams in, never held whole.
    """
    if req.items is not None:
        return req.items
    assert req.items_object is not None
    store, bucket, name, info = await _object(app, req.items_object)
    if (info.size or 0) > MAX_INPUT_BYTES:
        raise InvalidMessage(f"items_object: {name!r} is {info.size} bytes, more than the "
                             f"limit of {MAX_INPUT_BYTES}")
    sink = _Sink()
    try:
        got = await store.get(name, writeinto=sink)
    except (_ObjectNotFound, NotFoundError):
        raise InvalidMessage(f"items_object: no object {name!r} in {bucket}") from None
    if got.data:  # a link swapped in since the check: nats-py reads those whole
        sink.write(got.data)
    if sink.error is not None:
        raise sink.error
    return sink.reader.items()


async def _object(app: App, name: str) -> tuple[ObjectStore, str, str, ObjectInfo]:
    """The object `name` in BATCH_INPUTS, past any links: store, bucket, name and info."""
    store, bucket = app.inputs, defs.BATCH_INPUTS
    for hop in range(MAX_LINKS + 1):
        try:
            info = await store.get_info(name)
        except (_ObjectNotFound, NotFoundError):
            if hop == 0 and (copy := await _kept_object(app, name)) is not None:
                return copy  # aged out of BATCH_INPUTS while its batch was parked
            raise InvalidMessage(f"items_object: no object {name!r} in {bucket}") from None
        link = info.options.link if info.options else None
        if link is None:
            return store, bucket, name, info
        if not link.name:
            raise InvalidMessage(f"items_object: {name!r} links to a whole bucket")
        bucket, name = link.bucket, link.name
        try:
            store = await app.js.object_store(bucket)
        except NotFoundError:
            raise InvalidMessage(f"items_object: no bucket {bucket!r}") from None
    raise InvalidMessage(f"items_object: more than {MAX_LINKS} links to follow")


async def _kept_object(app: App, name: str) -> tuple[ObjectStore, str, str, ObjectInfo] | None:
    kept_name = kept.object_name(name)
    try:
        return app.kept, defs.BATCH_KEPT, kept_name, await app.kept.get_info(kept_name)
    except (_ObjectNotFound, NotFoundError):
        return None


class _Sink(io.BufferedIOBase):
    """Where the object store writes an object's chunks (from an executor thread, one at
    a time): into an ItemsReader. The first bad line is kept, not raised, so that the
    store's read runs to its end and lets go of its subscription; the rest is skipped."""

    def __init__(self) -> None:
        super().__init__()
        self.reader = ItemsReader()
        self.error: InvalidMessage | None = None

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        if self.error is None:
            try:
                self.reader.feed(bytes(data))
            except InvalidMessage as exc:
                self.error = exc
        return len(data)


async def load_input(app: App, seq: int) -> Input:
    """The batch.submit message at BATCH stream sequence `seq`, with its items."""
    try:
        data = (await app.js.get_msg(defs.BATCH, seq)).data or b""
    except NotFoundError:
        # Aged out of BATCH while its batch was parked: the copy kept then.
        if (copy := await kept.message(app, seq)) is None:
            raise PermanentError(f"input message {seq} is no longer in {defs.BATCH}") from None
        data = copy
    try:
        req = decode(data, SubmitRequest)
        return Input(req, await load_items(app, req))
    except InvalidMessage as exc:
        raise PermanentError(f"input message {seq}: {exc.reason}") from None


async def next_attempt(app: App, inp: Input, items: list[Item], attempt: int) -> SubmitRequest:
    """A batch.submit for `attempt` carrying only `items` (via the object store if large)."""
    base = inp.request
    fields = {"batch_id": base.batch_id, "model": base.model, "task_type": base.task_type,
              "output_dimensionality": base.output_dimensionality, "source": base.source,
              "attempt": attempt}
    data = encode_items_jsonl(items)
    if len(data) <= MESSAGE_ITEMS_MAX_BYTES:
        return SubmitRequest(items=items, **fields)  # type: ignore[arg-type]
    name = f"retry/{base.batch_id}/{attempt}.jsonl"
    await app.inputs.put(name, data)
    return SubmitRequest(items_object=name, **fields)  # type: ignore[arg-type]
