"""A batch job as batchyard sees it, read off the wire: its state, progress and inlined
results (the answers of `batches.get`, parsed without the SDK's pydantic models)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec
import numpy as np
import simdjson
from google.genai import types

from consumers import vectors
from consumers.errors import PermanentError

T = TypeVar("T")
TERMINAL = frozenset({"succeeded", "failed", "cancelled", "expired"})


class InlineResult(msgspec.Struct, frozen=True):
    # A Struct, not a dataclass: one is made per inlined response, in 0.1 µs against a
    # frozen dataclass's 0.6.
    values: np.ndarray | None
    error: str | None
    status: str | None = None  # INVALID_EMBEDDING: values that are not a list of numbers
    key: str | None = None  # the request's `metadata.key`, echoed by the API


@dataclass(frozen=True)
class Progress:
    """A job's `batchStats`: its requests, and how many have succeeded or failed so far."""

    requests: int
    succeeded: int
    failed: int

    @property
    def done(self) -> int:
        return self.succeeded + self.failed


@dataclass(frozen=True)
class Job:
    name: str
    display_name: str | None
    state: str  # pending, running, succeeded, failed, cancelled, expired
    output_file: str | None = None
    inline: list[InlineResult] | None = None
    progress: Progress | None = None

    @property
    def done(self) -> bool:
        return self.state in TERMINAL


_STATES = {"JOB_STATE_QUEUED": "pending", "JOB_STATE_PENDING": "pending",
           "JOB_STATE_RUNNING": "running", "JOB_STATE_SUCCEEDED": "succeeded",
           "JOB_STATE_FAILED": "failed", "JOB_STATE_CANCELLING": "running",
           "BATCH_STATE_CANCELLING": "running",
           "JOB_STATE_CANCELLED": "cancelled", "JOB_STATE_EXPIRED": "expired",
           "JOB_STATE_PAUSED": "pending", "JOB_STATE_UNSPECIFIED": "pending"}


def _job(job: types.BatchJob) -> Job:
    state = _STATES.get(job.state.value if job.state else "", "pending")
    dest = job.dest
    inline: list[InlineResult] | None = None
    if dest is not None:
        if dest.inlined_embed_content_responses is not None:
            inline = [InlineResult(
                values=(vectors.from_list(r.response.embedding.values)
                        if r.response and r.response.embedding
                        and r.response.embedding.values is not None else None),
                error=(r.error.message or f"error {r.error.code}") if r.error else None,
                key=_meta_key(r.metadata),
            ) for r in dest.inlined_embed_content_responses]
        elif dest.inlined_responses is not None:  # every item failed: the SDK's other list
            inline = [InlineResult(None, (r.error.message if r.error else None) or "no embedding")
                      for r in dest.inlined_responses]
    return Job(name=str(job.name), display_name=job.display_name, state=state,
               output_file=dest.file_name if dest else None, inline=inline)


def _raw_job(body: str | bytes, name: str) -> Job:
    """A Job from the JSON of a `batches.get` answer, read as the SDK reads it.

    simdjson reads the answer in one pass, and each embedding's values go from its
    document to float32 with no Python float made: a finished job's inlined results
    are megabytes of numbers.
    """
    data = body.encode() if isinstance(body, str) else body
    if not data:
        return Job(name=name, display_name=None, state="pending")
    try:
        return vectors.read_json(data, lambda doc: _job_of(doc, name))
    except ValueError:
        # NaN / Infinity literals: only stdlib json reads them. Written back by msgspec
        # they are null, and so an invalid embedding.
        data = msgspec.json.encode(json.loads(data))
        return vectors.read_json(data, lambda doc: _job_of(doc, name))


def _job_of(doc: Any, name: str) -> Job:
    meta = _field(doc, "metadata", simdjson.Object)
    out = _field(meta, "output", simdjson.Object)
    listed = (_field(out, "inlinedEmbedContentResponses", simdjson.Object)
              or _field(out, "inlinedResponses", simdjson.Object))
    rows = _field(listed, "inlinedResponses", simdjson.Array)
    inline = _inline(rows) if rows is not None else None
    state = (_field(meta, "state", str) or "").replace("BATCH_STATE_", "JOB_STATE_", 1)
    return Job(name=_field(doc, "name", str) or name,
               display_name=_field(meta, "displayName", str),
               state=_STATES.get(state, "pending"),
               output_file=_field(out, "responsesFile", str), inline=inline,
               progress=_progress(_field(meta, "batchStats", simdjson.Object)))


def _progress(stats: Any) -> Progress | None:
    """`batchStats` counts are int64, so strings on the wire; a count absent is 0."""
    if stats is None:
        return None
    counts = []
    for key in ("requestCount", "successfulRequestCount", "failedRequestCount"):
        value = stats.get(key)
        if isinstance(value, str) and value.isascii() and value.isdigit():
            value = int(value)
        counts.append(value if isinstance(value, int) and value >= 0 else 0)
    return Progress(*counts)


def _meta_key(meta: Any) -> str | None:
    """An inlined response's `metadata.key`: None when it has no metadata at all, ""
    when its metadata holds no string key (matched to no item)."""
    if meta is None:
        return None
    key = meta.get("key") if isinstance(meta, (dict, simdjson.Object)) else None
    return key if isinstance(key, str) else ""


def _inline(rows: Any) -> list[InlineResult]:
    """Each of the inlined responses `rows`, as `_inlined` reads it.

    A response of the usual shape, `{"metadata": {"key": "…"}, "response": {"embedding":
    {"values": [numbers]}}}`, is read here in a few lookups, and its values go into one
    float32 matrix (a row per response) with the first such response's length; anything
    else is left to `_inlined`. Each field `_inlined` asks for and finds absent (`error`,
    on every success) costs a KeyError raised and caught inside simdjson: some 3 µs, near
    a third of what `_inlined` takes for the whole response.
    """
    out: list[InlineResult] = []
    matrix: np.ndarray | None = None
    with np.errstate(over="ignore"):  # beyond float32 is inf, for check_vector to reject
        for n, row in enumerate(rows):
            try:
                key = row["metadata"]["key"]
                values = row["response"]["embedding"]["values"]
                doubles = np.frombuffer(values.as_buffer(of_type="d"), np.float64)
            except (LookupError, TypeError, AttributeError, ValueError):
                out.append(_inlined(row))
                continue
            # Two fields, both found: there is no `error`. A nested array flattens to
            # more values than it has elements.
            if len(row) != 2 or type(key) is not str or doubles.size != len(values) \
                    or (matrix is not None and doubles.size != matrix.shape[1]):
                out.append(_inlined(row))
                continue
            if matrix is None:
                matrix = np.empty((len(rows), doubles.size), np.float32)
            vector = matrix[n]
            vector[:] = doubles
            out.append(InlineResult(vector, None, key=key))
    return out


def _inlined(row: Any) -> InlineResult:
    key = _meta_key(_field(row, "metadata", simdjson.Object))
    error = _field(row, "error", simdjson.Object)
    if error is not None:
        return InlineResult(None, _field(error, "message", str)
                            or f"error {_field(error, 'code', int)}", key=key)
    embedding = _field(_field(row, "response", simdjson.Object), "embedding", simdjson.Object)
    values = embedding.get("values") if embedding is not None else None
    if values is None:
        return InlineResult(None, None, key=key)
    try:
        return InlineResult(vectors.from_array(values), None, key=key)
    except vectors.NotAVector as exc:
        return InlineResult(None, str(exc), "INVALID_EMBEDDING", key=key)


def _field(obj: Any, key: str, kind: type[T]) -> T | None:
    """`obj[key]` when it is a `kind`; None when `obj` or the field is absent or null."""
    if obj is None:
        return None
    if not isinstance(obj, simdjson.Object):
        raise PermanentError(f"unexpected response shape: no object holds {key!r}")
    value = obj.get(key)
    if value is None or isinstance(value, kind):
        return value
    raise PermanentError(f"unexpected response shape: {key!r} is a {type(value).__name__}")
