"""Vector lengths as the real API gives them: only the full 3072-value vector is unit
length; a shorter one is its prefix, not renormalised (issue 19)."""

from __future__ import annotations

import numpy as np
from google import genai

from sandbox.emulator import embed

MODEL = "gemini-embedding-001"


def test_shorter_vectors_are_the_full_vectors_prefix() -> None:
    full = np.asarray(embed.vector(MODEL, "text", 3072))
    assert abs(np.linalg.norm(full) - 1.0) < 1e-6
    for dims in (1, 16, 768, 1536):
        short = np.asarray(embed.vector(MODEL, "text", dims))
        assert np.linalg.norm(short) < 1.0
        assert np.allclose(short, full[:dims], rtol=1e-6, atol=0)  # float32 rounding apart
        cosine = short @ full[:dims] / (np.linalg.norm(short) * np.linalg.norm(full[:dims]))
        assert abs(cosine - 1.0) < 1e-9


async def test_online_answer_below_3072_is_not_unit_length(client: genai.Client) -> None:
    got = await client.aio.models.embed_content(
        model=MODEL, contents=["text"], config={"output_dimensionality": 768})
    values = (got.embeddings or [])[0].values or []
    assert values == embed.vector(MODEL, "text", 768)
    assert 0.1 < np.linalg.norm(values) < 0.9  # about sqrt(768 / 3072) = 0.5
