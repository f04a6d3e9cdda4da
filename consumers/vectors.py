"""Embedding values off the wire, straight from JSON text to float32.

A finished job's results are mostly numbers: read as Python floats first, they cost
more CPU than everything else a poll pod does. simdjson reads each document once and
copies an array's numbers out as doubles.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np
import simdjson

T = TypeVar("T")
# A parser keeps the capacity of the largest document it has read; larger ones get a
# parser of their own, so that one huge answer does not stay in a pod's memory.
KEEP_BYTES = 16 * 1024**2
_parser = simdjson.Parser()


class NotAVector(ValueError):
    """Embedding values that are not a flat list of numbers."""


def read_json(data: bytes, reader: Callable[[Any], T]) -> T:
    """`reader` applied to the simdjson document of `data`; ValueError if it is not JSON.

    Nothing `reader` returns may hold a proxy of the document: the parser is reused and
    refuses a new document while one of the last is referenced.
    """
    global _parser
    parser = _parser if len(data) <= KEEP_BYTES else simdjson.Parser()
    try:
        return reader(parser.parse(data))
    except BaseException:
        # The failure's traceback may keep the document's proxies alive.
        _parser = simdjson.Parser()
        raise


def from_array(values: Any) -> np.ndarray:
    """The float32 vector of a document's array of numbers.

    NotAVector for anything else: strings, nulls, objects, nested arrays. simdjson
    flattens nested arrays, and only those of one number each get by the count check;
    their numbers are what a flat array could have held. Values beyond float32 become
    inf, for `check_vector` to reject (callers reading many hold
    `np.errstate(over="ignore")` around them: per call it costs a sixth of a parse).
    """
    if not isinstance(values, simdjson.Array):
        raise NotAVector("embedding values are not a list")
    try:
        doubles = values.as_buffer(of_type="d")
    except TypeError:
        raise NotAVector("embedding values are not all numbers") from None
    vector = np.frombuffer(doubles, dtype=np.float64)
    if vector.size != len(values):
        raise NotAVector("embedding values are not a flat list of numbers")
    return vector.astype(np.float32)


def from_json(raw: bytes | memoryview) -> np.ndarray:
    """The float32 vector a JSON array of numbers holds, as `from_array` reads it."""
    data = bytes(raw).strip()
    # The text is at hand here: a '[' past the first is a nested array, or is in a string.
    if data[:1] != b"[" or data.find(b"[", 1) != -1:
        raise NotAVector("embedding values are not a flat list of numbers")
    try:
        return read_json(data, from_array)
    except NotAVector:
        raise
    except ValueError:  # simdjson refused the text: a number beyond float64, say
        raise NotAVector("embedding values are not all numbers") from None


def from_list(values: Sequence[float]) -> np.ndarray:
    """The float32 vector of values already read (the SDK's online answers)."""
    with np.errstate(over="ignore"):
        return np.asarray(values, dtype=np.float32)


def unit_rows(values: np.ndarray) -> np.ndarray:
    """`values` (one vector, or vectors stacked as rows) scaled to unit L2 norm.

    The API's vectors are unit length only at full size; a shorter one is the prefix of
    the full vector and must be rescaled. Done in float64, where no float32 value's
    square under- or overflows, so only an all-zero row has norm 0: `check_vector`
    rejects those before any row gets here.
    """
    wide = np.asarray(values, dtype=np.float64)
    return wide / np.linalg.norm(wide, axis=-1, keepdims=True)
