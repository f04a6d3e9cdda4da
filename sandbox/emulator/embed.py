"""Deterministic embeddings: the same model and text give the same unit vector."""

from __future__ import annotations

import hashlib
import math
import random
import struct


def estimate_tokens(texts: list[str]) -> int:
    """UTF-8 byte length of all texts together, divided by 4, rounded up."""
    return -(-sum(len(text.encode()) for text in texts) // 4)


def vector(model: str, text: str, dims: int) -> list[float]:
    """A unit vector of `dims` values seeded by sha256 of model and text.

    A shorter vector is a prefix of a longer one, renormalised, as Matryoshka
    embeddings truncate.
    """
    digest = hashlib.sha256(f"{model}\0{text}".encode()).digest()
    raw = random.Random(int.from_bytes(digest, "big")).randbytes(4 * dims)
    values = struct.unpack(f"<{dims}i", raw)
    norm = math.hypot(*values)
    if norm == 0.0:
        return [1.0] + [0.0] * (dims - 1)
    return [value / norm for value in values]


def corrupt(values: list[float], kind: str) -> list[float]:
    """`values` spoiled the way `kind` names: wrong_length, nan or zeros."""
    if kind == "wrong_length":
        return values[:-1] if len(values) > 1 else [*values, 0.0]
    if kind == "nan":
        return [math.nan, *values[1:]]
    return [0.0] * len(values)
