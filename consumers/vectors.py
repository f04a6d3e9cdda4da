"""Embedding values off the wire, straight from JSON text to float32.

A finished job's results are mostly numbers: read as Python floats first, they cost
more CPU than everything else a poll pod does. simdjson copies them out as doubles.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import simdjson

_parser = simdjson.Parser()


def from_json(raw: bytes | memoryview) -> np.ndarray:
    """The float32 vector a JSON array of numbers holds.

    ValueError for anything else: nested arrays, strings, nulls, numbers beyond float64.
    Values beyond float32 become inf, for `check_vector` to reject (callers reading many
    hold `np.errstate(over="ignore")` around them: per call it costs a sixth of a parse).
    """
    global _parser
    data = bytes(raw).strip()
    # as_buffer would flatten nested arrays; a '[' past the first is one, or is in a string.
    if data[:1] != b"[" or data.find(b"[", 1) != -1:
        raise ValueError("embedding values are not a flat list of numbers")
    try:
        array = _parser.parse(data)
        assert isinstance(array, simdjson.Array)  # it starts with '['
        doubles = array.as_buffer(of_type="d")
        del array
    except (ValueError, TypeError):
        # The failed document may outlive this call in the traceback, and a parser
        # refuses a new document while an old one is referenced.
        _parser = simdjson.Parser()
        raise ValueError("embedding values are not all numbers") from None
    return np.frombuffer(doubles, dtype=np.float64).astype(np.float32)


def from_list(values: Sequence[float]) -> np.ndarray:
    """The float32 vector of values already read (the SDK's online answers)."""
    with np.errstate(over="ignore"):
        return np.asarray(values, dtype=np.float32)
