"""The floor of bench_cost's work: what any implementation must do with a finished job's
answer (read it, match each vector to its item, check and normalise it, encode the rows,
COPY them), done in one process on the answer's bytes already at hand, with no NATS,
HTTP or SQL round trip but the COPY itself.

Built on the libraries directly, not on consumers/, so that it carries none of our
overheads; its checks are ours: the count of values, all finite, not all zero. Its
COPY stream is byte for byte the one consumers/store/pgcopy.py writes. It runs with the
pods' malloc thresholds (consumers/malloc.py), so that neither side pays page faults
the other does not.
"""

from __future__ import annotations

import hashlib
import struct
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import aiohttp
import asyncpg
import numpy as np
import simdjson

from consumers import malloc

TABLE = "floor_embeddings"
COLUMNS = ("item_id", "model", "batch_id", "dims", "embedding", "task_type", "text_sha256")
_HEADER = b"PGCOPY\n\xff\r\n\x00" + bytes(8)
_TRAILER = struct.pack(">h", -1)
_ROW = struct.pack(">h", len(COLUMNS))
_NULL = struct.pack(">i", -1)  # task_type
_ELEMENT = np.dtype([("len", ">i4"), ("value", ">f4")])  # one real[] element on the wire
_FLOAT4_OID = 700
# simdjson, not msgspec: it copies an array's numbers out as doubles with no Python
# float made. Decoding into `list[float]` with msgspec took 6x the CPU on this answer.
_parser = simdjson.Parser()


async def answer(url: str, key: str, job_name: str) -> bytes:
    """The emulator's `batches.get` answer for a finished job, asked as the poll pod asks
    (its field mask leaves out the Operation's second copy of the results)."""
    headers = {"x-goog-api-key": key, "X-Goog-FieldMask": "name,metadata"}
    async with aiohttp.ClientSession() as http, \
            http.get(f"{url}/v1beta/{job_name}", headers=headers) as resp:
        resp.raise_for_status()
        return await resp.read()


def decode(data: bytes, position: dict[str, int], dims: int) -> tuple[list[int], np.ndarray]:
    """The item position and the float32 values of each usable response, in answer order."""
    # Read in a call of its own: the parser is reused, and refuses a new document while
    # a proxy of the last one is alive; the call's locals die with it.
    with np.errstate(over="ignore"):  # beyond float32 is inf, for the norm to reject
        return _read(_parser.parse(data), position, dims)


def _read(doc: Any, position: dict[str, int], dims: int,
          ) -> tuple[list[int], np.ndarray]:
    rows = doc["metadata"]["output"]["inlinedResponses"]["inlinedResponses"]
    vectors = np.empty((len(rows), dims), np.float32)
    at, ok, seen = [], np.ones(len(rows), np.bool_), bytearray(len(position))
    for n, row in enumerate(rows):
        try:  # the API reorders inlined responses: each is matched by its metadata.key
            item = position[row["metadata"]["key"]]
            values = row["response"]["embedding"]["values"]
            if seen[item] or len(values) != dims:  # a nested array flattens to more values
                raise ValueError
            vectors[n] = np.frombuffer(values.as_buffer(of_type="d"), np.float64)
            seen[item] = 1
            at.append(item)
        except (KeyError, TypeError, ValueError):  # absent, not numbers, not its item's
            ok[n] = False
    return at, vectors if ok.all() else vectors[ok]


def norms(vectors: np.ndarray) -> np.ndarray:
    """Each row's L2 norm, summed in float64: there no float32's square under- or
    overflows, so a norm is finite and not 0 exactly when the row's values are all
    finite and not all zero, and one pass checks both."""
    return np.sqrt(np.einsum("ij,ij->i", vectors, vectors, dtype=np.float64))


def _text(value: str | bytes) -> bytes:
    data = value.encode() if isinstance(value, str) else value
    return struct.pack(">i", len(data)) + data


def encode(model: str, batch_id: str, ids: Sequence[str], shas: Sequence[bytes],
           vectors: np.ndarray, norm: np.ndarray, out: np.ndarray) -> bytes:
    """The rows in COPY's binary format, each vector divided by its norm (in float64) as
    its real[] bytes are written into `out`: one numpy pass.

    `out` (of _ELEMENT, a row per item) is kept from batch to batch: a fresh one, freed
    each time, is handed back to the kernel and faulted in again by the next batch,
    which took more CPU than the encoding itself.
    """
    n, dims = vectors.shape
    elements = out[:n]
    elements["len"] = 4
    np.divide(vectors, norm[:, None], out=elements["value"], dtype=np.float64,
              casting="unsafe")
    fixed = _text(model) + _text(batch_id) + struct.pack(">ii", 4, dims) \
        + struct.pack(">iiiiii", 20 + 8 * dims, 1, 0, _FLOAT4_OID, dims, 1)
    parts: list[Any] = [_HEADER]  # bytes, and rows of `out`
    for item_id, row, sha in zip(ids, elements.view(np.uint8), shas, strict=True):
        parts += (_ROW, _text(item_id), fixed, row, _NULL, _text(sha))
    parts.append(_TRAILER)
    return b"".join(parts)


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def write(db: asyncpg.Connection, data: bytes, model: str, batch_id: str,
                ids: Sequence[str], texts: Sequence[str], out: np.ndarray) -> int:
    """One batch: its answer read, checked, encoded and copied. Returns the rows written."""
    dims = out.shape[1]
    at, vectors = decode(data, {item_id: n for n, item_id in enumerate(ids)}, dims)
    norm = norms(vectors)
    ok = np.isfinite(norm) & (norm > 0)
    if not ok.all():
        at, vectors, norm = [item for item, good in zip(at, ok, strict=True) if good], \
            vectors[ok], norm[ok]
    shas = [hashlib.sha256(texts[item].encode()).digest() for item in at]
    rows = encode(model, batch_id, [ids[item] for item in at], shas, vectors, norm, out)
    await db.copy_to_table(TABLE, source=_once(rows), columns=COLUMNS, format="binary")
    return len(at)


async def measure(db: asyncpg.Connection, data: bytes, model: str, ids: Sequence[str],
                  texts: Sequence[str], dims: int, batches: int, rounds: int = 5,
                  ) -> list[float]:
    """This process's CPU seconds for each round of `batches` batches that all have the
    answer `data` for items `ids`."""
    malloc.keep_freed()
    # No primary key: every batch writes the same items again.
    await db.execute(f"CREATE TABLE IF NOT EXISTS {TABLE} "
                     "(LIKE batchyard.embeddings INCLUDING DEFAULTS)")
    spent, out = [], np.empty((len(ids), dims), _ELEMENT)
    for _ in range(rounds):
        start = time.process_time()
        written = sum([await write(db, data, model, f"floor-b{b}", ids, texts, out)
                       for b in range(batches)])
        spent.append(time.process_time() - start)
        assert written == batches * len(ids), (written, batches * len(ids))
        assert await db.fetchval(f"SELECT count(*) FROM {TABLE}") == written
        await db.execute(f"TRUNCATE {TABLE}")
    return spent
