"""Embedding rows in PostgreSQL's binary COPY format, built with numpy.

asyncpg's own encoder turns every Python float into a binary `real` one at a time;
here a whole vector becomes its `real[]` bytes in one numpy operation.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

import numpy as np

from consumers.vectors import unit_rows

HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
TRAILER = struct.pack(">h", -1)
_FLOAT4_OID = 700
_ELEMENT = np.dtype([("len", ">i4"), ("value", ">f4")])
_ROW = struct.Struct(">h")
_FIELD = struct.Struct(">i")
_ARRAY = struct.Struct(">iiiiii")  # field length, ndim, has-nulls, oid, dim, lower bound
COLUMNS = ("item_id", "model", "batch_id", "dims", "embedding", "task_type", "text_sha256")
_NULL = _FIELD.pack(-1)
_FIELDS = _ROW.pack(len(COLUMNS))  # each row's field count
KEEP_VALUES = 256 * 3072  # a flush of 256 rows at the largest dimensionality
SQUARES_VALUES = 64 * 1024  # float64 squares of rows, summed a block of rows at a time
_buffers: dict[str, np.ndarray] = {}


def _text(value: str) -> bytes:
    data = value.encode()
    return _FIELD.pack(len(data)) + data


def encode_rows(model: str, batch_id: str, rows: Sequence[tuple[str, np.ndarray]],
                normalize: bool = False, *, task_type: str | None = None,
                shas: Sequence[bytes | None] | None = None) -> bytes:
    """One COPY … (FORMAT binary) stream of COLUMNS: each row's item_id and vector, with
    `shas[n]` (the sha256 of its text) when given.

    With `normalize`, every vector is stored at unit length (no row may be all zeros).
    """
    fixed = _text(model) + _text(batch_id)
    task = _NULL if task_type is None else _text(task_type)
    hashes = [_NULL if sha is None else _FIELD.pack(len(sha)) + sha
              for sha in (shas if shas is not None else [None] * len(rows))]
    parts: list[Any] = [HEADER]  # bytes, and rows of a numpy matrix
    vectors = [vector for _, vector in rows]
    sizes = {int(vector.size) for vector in vectors}
    if len(sizes) == 1:  # the usual case: every vector's elements in one numpy operation
        n = sizes.pop()
        elements = _elements(len(rows) * n)
        _write_values(vectors, n, normalize, elements["value"])
        tail = fixed + _FIELD.pack(4) + _FIELD.pack(n) + _array_header(n)
        matrix = elements.reshape(len(rows), n).view(np.uint8)
        for (item_id, _), row, sha in zip(rows, matrix, hashes, strict=True):
            parts += (_FIELDS, _text(item_id), tail, row, task, sha)
    else:
        for (item_id, vector), sha in zip(rows, hashes, strict=True):
            n = int(vector.size)
            elements = np.empty(n, dtype=_ELEMENT)
            elements["len"] = 4
            elements["value"] = unit_rows(vector) if normalize else vector
            parts += (_FIELDS, _text(item_id), fixed, _FIELD.pack(4),
                      _FIELD.pack(n), _array_header(n), elements.tobytes(), task, sha)
    parts.append(TRAILER)
    return b"".join(parts)  # copies the rows out of the kept buffer


def _write_values(vectors: list[np.ndarray], n: int, normalize: bool, out: np.ndarray) -> None:
    """The vectors (each of `n` values), one after another, into `out`, at unit length
    if `normalize`: the float32 values `unit_rows` gives for them stacked, to the bit,
    with no float64 copy of them all."""
    if not normalize:
        np.concatenate(vectors, out=out)
        return
    rows = out.reshape(len(vectors), n)
    if all(vector.dtype == np.float32 for vector in vectors):  # as off the wire: exact in `out`
        np.concatenate(vectors, out=out)
        values = rows
    else:  # rounded to float32 first, they would be rounded twice
        values = np.stack(vectors).reshape(len(vectors), n)
    np.divide(values, _norms(values)[:, None], out=rows, dtype=np.float64, casting="unsafe")


def _norms(values: np.ndarray) -> np.ndarray:
    """Each row's L2 norm, as np.linalg.norm gives it for the rows in float64 (`unit_rows`):
    the same squares, summed in the same order, a few rows' at a time."""
    rows, n = values.shape
    norms = np.empty(rows)
    step = max(1, SQUARES_VALUES // max(n, 1))
    block = min(step, rows)
    squares = _kept("squares", np.float64, block * n).reshape(block, n)
    for start in range(0, rows, step):
        part = values[start:start + step]
        np.multiply(part, part, out=squares[:len(part)], dtype=np.float64)
        np.add.reduce(squares[:len(part)], axis=1, out=norms[start:start + step])
    return np.sqrt(norms, out=norms)


def _elements(size: int) -> np.ndarray:
    """`size` COPY elements, each `len` 4, their values to be written."""
    return _kept("elements", _ELEMENT, size, fill=(4, 0.0))


def _kept(name: str, dtype: Any, size: int, fill: Any = None) -> np.ndarray:
    """`size` elements of the working buffer `name` (of `fill`, when new), kept from
    call to call up to KEEP_VALUES: a fresh one each batch, freed, went back to the
    kernel and was faulted in again by the next, which took more CPU than the encoding
    itself. Only the event loop's thread encodes, and no buffer is used past the call
    that asked for it."""
    buf = _buffers.get(name)
    if buf is not None and buf.size >= size:
        return buf[:size]
    buf = np.empty(size, dtype)
    if fill is not None:
        buf[:] = fill
    if size <= KEEP_VALUES:
        _buffers[name] = buf
    return buf


def _array_header(n: int) -> bytes:
    return _ARRAY.pack(20 + 8 * n, 1, 0, _FLOAT4_OID, n, 1)
