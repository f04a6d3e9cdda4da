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
    sizes = {int(vector.size) for _, vector in rows}
    if len(sizes) == 1:  # the usual case: every vector's elements in one numpy operation
        n = sizes.pop()
        matrix = np.empty((len(rows), n), dtype=_ELEMENT)
        matrix["len"] = 4
        stacked = np.stack([vector for _, vector in rows])
        matrix["value"] = unit_rows(stacked) if normalize else stacked
        tail = fixed + _FIELD.pack(4) + _FIELD.pack(n) + _array_header(n)
        for (item_id, _), row, sha in zip(rows, matrix.view(np.uint8), hashes, strict=True):
            parts += (_ROW.pack(len(COLUMNS)), _text(item_id), tail, row, task, sha)
    else:
        for (item_id, vector), sha in zip(rows, hashes, strict=True):
            n = int(vector.size)
            elements = np.empty(n, dtype=_ELEMENT)
            elements["len"] = 4
            elements["value"] = unit_rows(vector) if normalize else vector
            parts += (_ROW.pack(len(COLUMNS)), _text(item_id), fixed, _FIELD.pack(4),
                      _FIELD.pack(n), _array_header(n), elements.tobytes(), task, sha)
    parts.append(TRAILER)
    return b"".join(parts)


def _array_header(n: int) -> bytes:
    return _ARRAY.pack(20 + 8 * n, 1, 0, _FLOAT4_OID, n, 1)
