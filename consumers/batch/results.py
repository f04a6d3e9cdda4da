"""Results of a finished job: stream-parse, validate each vector, upsert in chunks.

Memory stays bounded whatever the file size: a partial line of at most `max_line` bytes
and at most `FLUSH_ROWS` rows are held at once. A longer line is dropped as it comes and
fails its item.
"""

from __future__ import annotations

import re

import msgspec
import numpy as np
import structlog

from consumers import vectors
from consumers.app import App
from consumers.batch.inputs import Input
from consumers.gemini.jobs import InlineResult
from events.payloads import MAX_DIMENSIONALITY, ErrorDetail

log = structlog.get_logger("batchyard.results")
FLUSH_ROWS = 256
EMBEDDED, FAILED = 1, 2  # Ingest.done: what an item's result was
# A results line's bound: each value at 64 bytes (a double's shortest JSON is at most 24,
# so spacing has room), and 256 KiB for its key, an error's message and whatever else
# the API may add to a line. 448 KiB at 3072 dims; a longer line is no result.
VALUE_BYTES, LINE_SLACK = 64, 256 * 1024
KEY_AT = re.compile(rb'\s*\{\s*"key"\s*:\s*("(?:[^"\\]|\\.)*")')  # a line's leading key


class _Embedding(msgspec.Struct):
    values: msgspec.Raw  # read by vectors.from_json


class _Error(msgspec.Struct):
    code: int | None = None
    message: str = ""
    status: str | None = None


class _Response(msgspec.Struct):
    embedding: _Embedding | None = None
    error: _Error | None = None


class _Line(msgspec.Struct):
    key: str | None = None
    response: _Response | None = None
    error: _Error | None = None
    status: _Error | None = None


_line = msgspec.json.Decoder(_Line)
_any = msgspec.json.Decoder()


def check_vector(vector: np.ndarray, dims: int | None) -> str | None:
    """Why `vector` cannot be stored, or None when it is a usable embedding."""
    if dims is not None and vector.size != dims:
        return f"expected {dims} values, got {vector.size}"
    if not vector.size:
        return "empty embedding"
    if not np.isfinite(vector).all():
        return "embedding has non-finite values"
    if not vector.any():  # and so no direction to normalise to
        return "embedding has zero norm"
    return None


def check_vectors(vectors: list[np.ndarray | None], dims: int | None) -> list[str | None]:
    """`check_vector` of each of `vectors` (None for None), the usual case, vectors all of
    one length, in one pass over them all: a few numpy calls, not a few per vector.

    A vector's squares summed in float64 are finite and not 0 when its values are all
    finite and not all zero, and for float32 values only then (no square of one under-
    or overflows there); a vector they flag is checked again by check_vector, for its
    reason.
    """
    whys: list[str | None] = [None] * len(vectors)
    present = [(n, v) for n, v in enumerate(vectors) if v is not None]
    if not present:
        return whys
    size = dims if dims is not None else present[0][1].size
    sized = [(n, v) for n, v in present if v.size == size]
    good = [False] * len(vectors)
    if size and sized:
        matrix = np.concatenate([v for _, v in sized]).reshape(len(sized), size)
        squares = np.einsum("ij,ij->i", matrix, matrix, dtype=np.float64)
        for (n, _), fine in zip(sized, (np.isfinite(squares) & (squares > 0)).tolist(),
                                strict=True):
            good[n] = fine
    for n, v in present:
        if not good[n]:
            whys[n] = check_vector(v, dims)
    return whys


class Ingest:
    """Collects one attempt's results: rows to write, ids embedded, per-item failures."""

    def __init__(self, app: App, inp: Input):
        self.app = app
        self.inp = inp
        self.batch_id = inp.request.batch_id
        self.model = inp.model
        self.dims = inp.dims
        self.normalize = app.settings.normalize
        self.order = [item.id for item in inp.items]
        # Positions, not fresh key strings: memory stays at the input's own ids.
        self.position = {key: n for n, key in enumerate(self.order)}
        self.done = bytearray(len(self.order))
        self.embedded = 0
        self.rows: list[tuple[str, np.ndarray]] = []
        self.shas = inp.text_shas
        self.row_shas: list[bytes] = []  # each row's text hash, stored for reuse (§13)
        self.failures: dict[str, ErrorDetail] = {}
        self.unexpected = 0
        self.duplicated: set[str] = set()
        self.max_line = VALUE_BYTES * (self.dims or MAX_DIMENSIONALITY) + LINE_SLACK
        self._tail = bytearray()
        self._skipping = False  # a line past max_line is being dropped up to its end

    def add(self, key: str | None, vector: np.ndarray | None, error: ErrorDetail | None,
            checked: bool = False) -> None:
        """Take the result for `key`. A result for no item is counted and dropped; a second
        result for one item fails it, since which of the two is its own is unknown.
        `checked`: `vector` has passed check_vector already."""
        at = self.position.get(key) if key is not None else None
        if at is None:
            self.unexpected += 1
            return
        key = self.order[at]
        if self.done[at]:
            self.duplicated.add(key)
            return
        if vector is not None and error is None:
            why = None if checked else check_vector(vector, self.dims)
            if why is None:
                self.done[at] = EMBEDDED
                self.embedded += 1
                self.rows.append((key, vector))
                self.row_shas.append(self.shas[at])
                return
            error = ErrorDetail(status="INVALID_EMBEDDING", message=why)
        self.done[at] = FAILED
        self.failures[key] = error or ErrorDetail(message="no embedding in the result")

    async def flush(self) -> None:
        rows, self.rows = self.rows, []
        shas, self.row_shas = self.row_shas, []
        # Rows are normalised as they are encoded: the one numpy pass over the flush.
        for batch_id, (part, part_shas) in self._by_batch(rows, shas).items():
            await self.app.store.write_embeddings(
                self.model, batch_id, part, self.normalize,
                task_type=self.inp.request.task_type, shas=part_shas)

    def _by_batch(self, rows: list[tuple[str, np.ndarray]], shas: list[bytes],
                  ) -> dict[str, tuple[list[tuple[str, np.ndarray]], list[bytes]]]:
        """Rows by the batch they belong to: a pack's keys name it, `<batch_id>/<id>`."""
        if not self.inp.routed:
            return {self.batch_id: (rows, shas)}
        out: dict[str, tuple[list[tuple[str, np.ndarray]], list[bytes]]] = {}
        for (key, vector), sha in zip(rows, shas, strict=True):
            batch_id, _, item_id = key.partition("/")
            part = out.setdefault(batch_id, ([], []))
            part[0].append((item_id, vector))
            part[1].append(sha)
        return out

    async def feed(self, chunk: bytes) -> None:
        """Take the next chunk of a results file."""
        if self._skipping:
            end = chunk.find(b"\n")
            if end == -1:
                return
            chunk, self._skipping = chunk[end + 1:], False
        end = chunk.rfind(b"\n")
        if end != -1:
            lines = chunk[:end].split(b"\n")
            if self._tail:
                lines[0] = bytes(self._tail) + lines[0]
                self._tail.clear()
            with np.errstate(over="ignore"):
                for line in lines:
                    self._parse(line)
            chunk = chunk[end + 1:]
        self._tail += chunk[:self.max_line + 1 - len(self._tail)]
        if len(self._tail) > self.max_line:
            self._overlong(self._tail)
            self._tail.clear()
            self._skipping = True
        if len(self.rows) >= FLUSH_ROWS:
            await self.flush()

    def _overlong(self, start: bytes | bytearray) -> None:
        """Fail the item of a line past `max_line` (its key read from the line's start)."""
        found = KEY_AT.match(start, 0, 4096)
        try:
            key = msgspec.json.decode(found[1], type=str) if found else None
        except msgspec.DecodeError:
            key = None
        self.add(key, None, ErrorDetail(status="INVALID_RESULT", message=(
            f"result line longer than {self.max_line} bytes")))

    def _parse(self, raw: bytes) -> None:
        if not raw.strip():
            return
        if len(raw) > self.max_line:
            self._overlong(raw)
            return
        try:
            line = _line.decode(raw)
        except (msgspec.DecodeError, UnicodeDecodeError):
            key = _lenient_key(raw)
            self.add(key, None, ErrorDetail(status="INVALID_RESULT",
                                            message="result line could not be read"))
            return
        err = line.error or line.status or (line.response.error if line.response else None)
        detail = ErrorDetail(code=err.code, status=err.status, message=err.message) if err \
            else None
        vector = None
        if detail is None and line.response and line.response.embedding:
            try:
                vector = vectors.from_json(line.response.embedding.values)
            except ValueError as exc:
                detail = ErrorDetail(status="INVALID_EMBEDDING", message=str(exc))
        self.add(line.key, vector, detail)

    async def finish(self) -> None:
        """End of input: the last partial line, the last rows, and items never answered."""
        if self._tail:
            with np.errstate(over="ignore"):
                self._parse(bytes(self._tail))
            self._tail.clear()
        self._skipping = False
        if self.duplicated:
            await self._retract()
        await self.flush()
        for key, done in zip(self.order, self.done, strict=True):
            if not done:
                self.failures[key] = ErrorDetail(status="RESULT_MISSING",
                                                 message="no result for this item")
        if self.unexpected:
            log.warning("results.unexpected_keys", batch_id=self.batch_id, count=self.unexpected)

    async def _retract(self) -> None:
        """Fail every item that had more than one result, and take back its vector."""
        log.warning("results.duplicated_keys", batch_id=self.batch_id,
                    count=len(self.duplicated))
        taken = [k for k in self.duplicated if self.done[self.position[k]] == EMBEDDED]
        self.embedded -= len(taken)
        kept = [n for n, r in enumerate(self.rows) if r[0] not in self.duplicated]
        self.rows = [self.rows[n] for n in kept]
        self.row_shas = [self.row_shas[n] for n in kept]
        if self.inp.routed:
            for key in taken:
                batch_id, _, item_id = key.partition("/")
                await self.app.store.delete_embeddings(self.model, batch_id, [item_id])
        else:
            await self.app.store.delete_embeddings(self.model, self.batch_id, taken)
        for key in self.duplicated:
            self.failures[key] = ErrorDetail(status="RESULT_MISSING",
                                             message="more than one result for this item")


def _lenient_key(raw: bytes) -> str | None:
    try:
        value = _any.decode(raw)
    except (msgspec.DecodeError, UnicodeDecodeError):
        return None
    key = value.get("key") if isinstance(value, dict) else None
    return key if isinstance(key, str) else None


async def ingest_file(app: App, inp: Input, file_name: str) -> Ingest:
    """Download, parse, validate and upsert a results file."""
    ingest = Ingest(app, inp)
    await app.gemini.download(file_name, ingest.feed)
    await ingest.finish()
    return ingest


async def ingest_inline(app: App, inp: Input, results: list[InlineResult]) -> Ingest:
    """Validate and upsert inlined responses, matched to their items by `metadata.key`.

    The API reorders inlined responses, so position is trusted only when no response
    carries metadata at all, they number at most BATCHYARD_INLINE_MAX_ITEMS and exactly
    as many as the items; otherwise an unmatched item fails (RESULT_MISSING).
    """
    if any(r.key is not None for r in results):
        keys: list[str | None] = [r.key for r in results]
    elif len(results) == len(inp.items) <= app.settings.inline_max_items:
        keys = [item.id for item in inp.items]
    else:
        log.warning("results.unmatchable", batch_id=inp.request.batch_id,
                    responses=len(results), items=len(inp.items))
        keys = [None] * len(results)
    return await _ingest(app, inp, keys, results)


async def _ingest(app: App, inp: Input, keys: list[str | None],
                  results: list[InlineResult]) -> Ingest:
    ingest = Ingest(app, inp)
    whys = check_vectors([None if r.error else r.values for r in results], ingest.dims)
    for key, result, why in zip(keys, results, whys, strict=True):
        error = ErrorDetail(status=result.status, message=result.error) if result.error else None
        if why is not None:
            error = ErrorDetail(status="INVALID_EMBEDDING", message=why)
        ingest.add(key, result.values, error, checked=True)
        if len(ingest.rows) >= FLUSH_ROWS:
            await ingest.flush()
    await ingest.finish()
    return ingest
