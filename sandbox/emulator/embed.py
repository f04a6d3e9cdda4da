"""Deterministic embeddings: the same model and text give the same vector."""

from __future__ import annotations

import hashlib
import random

import numpy as np


def estimate_tokens(texts: list[str]) -> int:
    """UTF-8 byte length of all texts together, divided by 4, rounded up."""
    return -(-sum(len(text.encode()) for text in texts) // 4)


FULL_DIMS = 3072  # every catalogued model's largest dimensionality


def vector(model: str, text: str, dims: int) -> list[float]:
    """The first `dims` values of a unit vector seeded by sha256 of model and text.

    As the API's Matryoshka embeddings: only the full vector has unit length, and a
    shorter one is its prefix, not renormalised (callers must normalise it).
    """
    full = max(dims, FULL_DIMS)
    digest = hashlib.sha256(f"{model}\0{text}".encode()).digest()
    raw = random.Random(int.from_bytes(digest, "big")).randbytes(4 * full)
    values = np.frombuffer(raw, dtype="<i4").astype(np.float64)
    norm = float(np.linalg.norm(values))
    if norm == 0.0:
        values, norm = np.eye(1, full)[0], 1.0
    return as_written(values[:dims] / norm)


def as_written(values: np.ndarray) -> list[float]:
    """`values` as the API writes them: float32, in 9 significant digits.

    The API holds embeddings as float32, and 9 digits read back the same float32; the
    float64 a Python float holds would take 17 and make every answer twice its size.
    """
    held = values.astype(np.float32).astype(np.float64)
    magnitude = np.floor(np.log10(np.abs(held), where=held != 0, out=np.zeros_like(held)))
    # Powers of ten up to 1e22 are exact, so each quotient is the nearest double to a
    # 9-digit decimal, and its repr is that decimal.
    scale = np.power(10.0, np.clip(8 - magnitude, 0, 22))
    return (np.rint(held * scale) / scale).tolist()


def corrupt(values: list[float], kind: str) -> list[float | str]:
    """`values` spoiled the way `kind` names: wrong_length, nan or zeros."""
    if kind == "wrong_length":
        return [*values[:-1]] if len(values) > 1 else [*values, 0.0]
    if kind == "nan":
        return ["NaN", *values[1:]]  # proto3 JSON writes a non-finite float as a string
    return [0.0] * len(values)
