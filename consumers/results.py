"""Results of a finished job: stream-parse, validate each vector, upsert in chunks.

Memory stays bounded whatever the file size: a partial line and at most `FLUSH_ROWS`
rows are held at once.
"""

from __future__ import annotations

import msgspec
import numpy as np
import structlog

from consumers import vectors
from consumers.app import App
from consumers.gemini import InlineResult
from consumers.inputs import Input
from events.payloads import ErrorDetail

log = structlog.get_logger("batchyard.results")
FLUSH_ROWS = 256


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
        self.failures: dict[str, ErrorDetail] = {}
        self.unexpected = 0
        self._index = 0
        self._tail = b""

    def add(self, key: str | None, vector: np.ndarray | None, error: ErrorDetail | None) -> None:
        if key is None and self._index < len(self.order):
            key = self.order[self._index]  # lines come in input order
        self._index += 1
        at = self.position.get(key) if key is not None else None
        if at is None or self.done[at]:
            self.unexpected += 1
            return
        key = self.order[at]
        if vector is not None and error is None:
            why = check_vector(vector, self.dims)
            if why is None:
                self.failures.pop(key, None)
                self.done[at] = 1
                self.embedded += 1
                self.rows.append((key, vector))
                return
            error = ErrorDetail(status="INVALID_EMBEDDING", message=why)
        self.failures[key] = error or ErrorDetail(message="no embedding in the result")

    async def flush(self) -> None:
        rows, self.rows = self.rows, []
        # Rows are normalised as they are encoded: the one numpy pass over the flush.
        await self.app.store.write_embeddings(self.model, self.batch_id, rows, self.normalize)

    async def feed(self, chunk: bytes) -> None:
        """Take the next chunk of a results file."""
        lines = (self._tail + chunk).split(b"\n")
        self._tail = lines.pop()
        with np.errstate(over="ignore"):
            for line in lines:
                self._parse(line)
        if len(self.rows) >= FLUSH_ROWS:
            await self.flush()

    def _parse(self, raw: bytes) -> None:
        if not raw.strip():
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
                self._parse(self._tail)
            self._tail = b""
        await self.flush()
        for key, done in zip(self.order, self.done, strict=True):
            if not done and key not in self.failures:
                self.failures[key] = ErrorDetail(status="MISSING",
                                                 message="no result for this item")
        if self.unexpected:
            log.warning("results.unexpected_keys", batch_id=self.batch_id, count=self.unexpected)


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
    """Validate and upsert inlined responses (one per request, in input order)."""
    ingest = Ingest(app, inp)
    for item, result in zip(inp.items, results, strict=False):
        error = ErrorDetail(status=result.status, message=result.error) if result.error else None
        ingest.add(item.id, result.values, error)
        if len(ingest.rows) >= FLUSH_ROWS:
            await ingest.flush()
    await ingest.finish()
    return ingest


async def ingest_vectors(app: App, inp: Input, online: list[list[float] | None]) -> Ingest:
    """Validate and upsert online embeddings (one per item, in input order)."""
    results = [InlineResult(vectors.from_list(v), None) if v is not None
               else InlineResult(None, "no embedding") for v in online]
    return await ingest_inline(app, inp, results)
