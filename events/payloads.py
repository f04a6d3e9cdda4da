"""Every payload of CONTRACT §3 as a msgspec Struct, with its validation.

Messages are open-world (unknown fields are ignored) but strict about the fields
they know: a wrong type, a bad id or an over-limit size is an `InvalidMessage`
whose reason names the field and what was wrong.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal, TypeVar

import msgspec
from msgspec import Meta, Struct

DEFAULT_MODEL = "gemini-embedding-001"
MAX_ID_CHARS = 128
MAX_TEXT_CHARS = 32_768
MAX_ITEMS = 500_000
MAX_INPUT_BYTES = 256 * 1024 * 1024  # an items_object's bytes, and all texts' characters
# A line of an items_object, with room to spare: the longest id and text with every
# character escaped as a surrogate pair (12 bytes), and whitespace.
MAX_ITEM_LINE_BYTES = 12 * (MAX_TEXT_CHARS + MAX_ID_CHARS) + 64 * 1024
MAX_DIMENSIONALITY = 3072
MAX_ATTEMPT = 1000

ID_PATTERN = r"^[A-Za-z0-9._:-]{1,128}\Z"

Id = Annotated[str, Meta(min_length=1, max_length=MAX_ID_CHARS, pattern=ID_PATTERN)]
ModelName = Annotated[
    str, Meta(min_length=1, max_length=128, pattern=r"^(models/)?[A-Za-z0-9][A-Za-z0-9._-]*\Z")
]
ObjectName = Annotated[str, Meta(min_length=1, max_length=255, pattern=r"^[A-Za-z0-9._:/=-]+\Z")]
JobName = Annotated[str, Meta(max_length=256, pattern=r"^batches/[A-Za-z0-9_-]+\Z")]
Text = Annotated[str, Meta(min_length=1, max_length=MAX_TEXT_CHARS)]
Dimensionality = Annotated[int, Meta(ge=1, le=MAX_DIMENSIONALITY)]
Attempt = Annotated[int, Meta(ge=0, le=MAX_ATTEMPT)]
Count = Annotated[int, Meta(ge=0)]
FreeText = Annotated[str, Meta(max_length=1024)]
Fingerprint = Annotated[str, Meta(pattern=r"^[0-9a-f]{12}\Z")]
TaskType = Literal[
    "TASK_TYPE_UNSPECIFIED",
    "RETRIEVAL_QUERY",
    "RETRIEVAL_DOCUMENT",
    "SEMANTIC_SIMILARITY",
    "CLASSIFICATION",
    "CLUSTERING",
    "QUESTION_ANSWERING",
    "FACT_VERIFICATION",
    "CODE_RETRIEVAL_QUERY",
]
Stage = Literal["submit", "poll"]


class InvalidMessage(ValueError):
    """A message that cannot be decoded or breaks a rule; `reason` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Payload(Struct, frozen=True, kw_only=True):
    v: Literal[1] = 1


class Item(Struct, frozen=True):
    id: Id
    text: Text


def check_items(items: list[Item]) -> None:
    """Non-empty, unique ids, within the count and size limits (raises ValueError)."""
    if not items:
        raise ValueError("items: must not be empty")
    if len(items) > MAX_ITEMS:
        raise ValueError(f"items: {len(items)} items, more than the limit of {MAX_ITEMS}")
    seen: set[str] = set()
    size = 0
    for item in items:
        if item.id in seen:
            raise ValueError(f"items: duplicate id {item.id!r}")
        seen.add(item.id)
        size += len(item.text)
    if size > MAX_INPUT_BYTES:  # characters bound bytes from below; exact check below
        raise ValueError(f"items: texts total more than {MAX_INPUT_BYTES} bytes")


class SubmitRequest(_Payload, frozen=True, kw_only=True):
    batch_id: Id
    items: list[Item] | None = None
    items_object: ObjectName | None = None
    model: ModelName = DEFAULT_MODEL
    task_type: TaskType | None = None
    output_dimensionality: Dimensionality | None = None
    source: FreeText | None = None
    attempt: Attempt = 0

    def __post_init__(self) -> None:
        if (self.items is None) == (self.items_object is None):
            raise ValueError("exactly one of items or items_object is required")
        if self.items is not None:
            check_items(self.items)


PackId = Annotated[str, Meta(pattern=r"^pk[0-9a-f]{32}\Z")]


class PollRequest(_Payload, frozen=True, kw_only=True):
    batch_id: Id | None = None
    job_name: JobName
    attempt: Attempt = 0
    shard: Count = 0
    pack: PackId | None = None  # a pack's job (CONTRACT §12): batch_id is null

    def __post_init__(self) -> None:
        if (self.batch_id is None) == (self.pack is None):
            raise ValueError("exactly one of batch_id or pack is required")

    @property
    def batch(self) -> str:
        """The batch's id, for a poll that is not a pack's."""
        if self.batch_id is None:
            raise ValueError("a pack's poll has no batch_id")
        return self.batch_id


class ErrorDetail(Struct, frozen=True, kw_only=True):
    code: int | None = None
    status: str | None = None
    message: str = ""


class AuthFailed(_Payload, frozen=True, kw_only=True):
    batch_id: Id | None = None
    stage: Stage
    subject: Literal["batch.submit", "batch.poll"]
    payload: dict[str, Any]
    key_fingerprint: str
    error: ErrorDetail
    failed_at: datetime
    pack: PackId | None = None  # a pack's poll, parked once for the pack (CONTRACT §12)
    batches: list[Id] | None = None  # and its member batches

    def __post_init__(self) -> None:
        if (self.batch_id is None) == (self.pack is None):
            raise ValueError("exactly one of batch_id or pack is required")

    @property
    def batch_ids(self) -> list[str]:
        """The batches this parked message holds: its own, or a pack's members."""
        return [self.batch_id] if self.batch_id is not None else list(self.batches or [])


class Completed(_Payload, frozen=True, kw_only=True):
    batch_id: Id
    attempt: Count = 0
    job_name: str | None
    status: Literal["succeeded", "partial"]
    items_total: Count
    items_embedded: Count
    items_failed: Count
    items_reused: Count = 0  # CONTRACT §13: items that cost nothing
    completed_at: datetime


class DeadItem(Struct, frozen=True, kw_only=True):
    id: str
    error: ErrorDetail


class Dead(_Payload, frozen=True, kw_only=True):
    batch_id: str | None
    stage: str
    reason: str
    error: ErrorDetail | None
    subject: str
    payload: Any
    attempts: int
    dead_at: datetime
    items: list[DeadItem] | None = None


class KeyRotated(_Payload, frozen=True, kw_only=True):
    fingerprint: str | None = None
    source: FreeText | None = None


class KeyValid(_Payload, frozen=True, kw_only=True):
    fingerprint: Fingerprint
    model: str
    checked_at: datetime


class KeyInvalid(_Payload, frozen=True, kw_only=True):
    fingerprint: Fingerprint
    reason: str
    checked_at: datetime


class KeyHealth(Struct, frozen=True, kw_only=True):
    """The KEY_HEALTH bucket's `current` value."""

    fingerprint: str
    state: Literal["valid", "invalid", "unknown"]
    reason: str = ""
    checked_at: datetime | None = None


class QuotaGate(Struct, frozen=True, kw_only=True):
    """The QUOTA bucket's `batch-create` value."""

    state: Literal["open", "closed"]
    until: datetime | None = None
    reason: str = ""
    checked_at: datetime | None = None
    strikes: int = 0  # consecutive 429s on creation: the cooldown doubles with each


T = TypeVar("T")

_decoders: dict[type, msgspec.json.Decoder[Any]] = {}
_encoder = msgspec.json.Encoder()
_item = msgspec.json.Decoder(Item)
_PATH = re.compile(r"^(?P<what>.*) - at `\$\.?(?P<path>[^`]*)`$", re.S)


def encode(obj: Any) -> bytes:
    """JSON bytes of any payload."""
    return _encoder.encode(obj)


def decode(data: bytes, typ: type[T]) -> T:
    """Decode one message into `typ`; any failure is an `InvalidMessage`."""
    dec = _decoders.get(typ)
    if dec is None:
        dec = _decoders[typ] = msgspec.json.Decoder(typ)
    try:
        return dec.decode(data)  # type: ignore[no-any-return,unused-ignore]
    except UnicodeDecodeError as exc:
        raise InvalidMessage(f"not valid UTF-8: {exc.reason}") from None
    except RecursionError:
        raise InvalidMessage("JSON nested too deeply") from None
    except msgspec.ValidationError as exc:
        raise InvalidMessage(_reason(str(exc))) from None
    except msgspec.DecodeError as exc:
        if not data.strip():
            raise InvalidMessage("empty message, expected a JSON object") from None
        raise _undecodable(data, exc) from None


def _undecodable(data: bytes, exc: msgspec.DecodeError) -> InvalidMessage:
    # msgspec 0.23 reports bad UTF-8 as a DecodeError in its own words (0.22 raised
    # UnicodeDecodeError): the reason comes from the bytes, not from the library's text.
    try:
        data.decode()
    except UnicodeDecodeError as bad:
        return InvalidMessage(f"not valid UTF-8: {bad.reason} at byte {bad.start}")
    return InvalidMessage(f"not valid JSON: {exc}")


def decode_key_rotated(data: bytes) -> KeyRotated:
    """`key.rotated` may be empty (`nats pub key.rotated ''`)."""
    return KeyRotated() if not data.strip() else decode(data, KeyRotated)


def decode_items_jsonl(data: bytes) -> list[Item]:
    """Items stored as JSONL in the BATCH_INPUTS object store, validated like `items`."""
    reader = ItemsReader()
    reader.feed(data, last=True)
    return reader.items()


class ItemsReader:
    """`decode_items_jsonl` chunk by chunk: `feed` the object's bytes as they come, then
    take `items()`. Beyond the items it holds one partial line, of at most
    MAX_ITEM_LINE_BYTES; it reads lines as `bytes.splitlines` splits them."""

    def __init__(self) -> None:
        self._items: list[Item] = []
        self._tail = bytearray()
        self._lines = 0  # lines read so far, blank ones included
        self._size = 0

    def feed(self, chunk: bytes, *, last: bool = False) -> None:
        """Take the next bytes of the object (`last`: no more come); InvalidMessage at the
        first bad line."""
        self._size += len(chunk)
        if self._size > MAX_INPUT_BYTES:
            raise InvalidMessage(f"items_object: larger than {MAX_INPUT_BYTES} bytes")
        if not self._tail and (last or _whole_lines(chunk) == len(chunk)):
            self._read(chunk)  # no copy: the whole object at once, or whole lines
            return
        self._tail += chunk
        if end := _whole_lines(self._tail):
            whole = bytes(self._tail[:end])
            del self._tail[:end]
            self._read(whole)
        # The tail holds no line end but perhaps a CR whose LF is still to come.
        if len(self._tail) - self._tail.endswith(b"\r") > MAX_ITEM_LINE_BYTES:
            raise InvalidMessage(f"items_object: line {self._lines + 1}: longer than "
                                 f"{MAX_ITEM_LINE_BYTES} bytes")

    def items(self) -> list[Item]:
        """The items, once every byte is fed, checked as a whole like `items`."""
        if self._tail:
            tail, self._tail = bytes(self._tail), bytearray()
            self._read(tail)
        try:
            check_items(self._items)
        except ValueError as exc:
            raise InvalidMessage(f"items_object: {exc}") from None
        return self._items

    def _read(self, data: bytes) -> None:
        for line in data.splitlines():
            self._lines += 1
            n = self._lines
            if not line.strip():
                continue
            if len(line) > MAX_ITEM_LINE_BYTES:
                raise InvalidMessage(f"items_object: line {n}: longer than "
                                     f"{MAX_ITEM_LINE_BYTES} bytes")
            try:
                self._items.append(_item.decode(line))
            except UnicodeDecodeError:
                raise InvalidMessage(f"items_object: line {n}: not valid UTF-8") from None
            except RecursionError:
                raise InvalidMessage(f"items_object: line {n}: JSON nested too deeply") from None
            except msgspec.ValidationError as exc:
                raise InvalidMessage(f"items_object: line {n}: {_reason(str(exc))}") from None
            except msgspec.DecodeError as exc:
                raise InvalidMessage(
                    f"items_object: line {n}: {_undecodable(line, exc)}") from None


def _whole_lines(data: bytes | bytearray) -> int:
    """How many leading bytes of `data` are whole lines (as `splitlines` ends them)."""
    # A CR at the very end may be the first half of a CRLF: it ends no line yet.
    n = len(data) - data.endswith(b"\r")
    return max(data.rfind(b"\n", 0, n), data.rfind(b"\r", 0, n)) + 1


def encode_items_jsonl(items: list[Item]) -> bytes:
    """The JSONL form read by `decode_items_jsonl`."""
    buf = bytearray()
    for item in items:
        _encoder.encode_into(item, buf, len(buf))
        buf += b"\n"
    return bytes(buf)


def _reason(message: str) -> str:
    m = _PATH.match(message)
    what, path = (m["what"], m["path"] or "message") if m else (message, "message")
    if path == "v" and what.startswith("Invalid enum value"):
        return f"v: unsupported version {what.removeprefix('Invalid enum value ')}, only 1 is"
    return f"{path}: {what[0].lower()}{what[1:]}"
