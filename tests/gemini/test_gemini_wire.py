"""Our fast paths at the Gemini boundary say on the wire what the SDK's own calls say."""

from __future__ import annotations

from typing import Any

import numpy as np
from google import genai

from consumers.gemini.client import Gemini
from consumers.gemini.keys import KeySource
from consumers.settings import Settings
from tests.conftest import KEY
from tests.harness import wait_for

TEXTS = ["def f(): pass", "naïve café ✓", "\"quoted\"\n\ttabbed", "x" * 3000]


async def test_inline_create_and_get_match_the_sdk(emulator: Any) -> None:
    """The same texts and config through `batches.create_embeddings` and through
    `Gemini.create_job`: the emulator sees the same job; `get_job` reads the same results
    the SDK's `batches.get` does."""
    settings = Settings.from_env({"GEMINI_BASE_URL": emulator.url})
    ours = Gemini(settings, KeySource(KEY))
    sdk = genai.Client(api_key=KEY, http_options={"base_url": emulator.url,
                                                  "api_version": "v1beta"})
    config = {"task_type": "RETRIEVAL_DOCUMENT", "output_dimensionality": 8}
    theirs = await sdk.aio.batches.create_embeddings(
        model="gemini-embedding-001", config={"display_name": "sdk:0"},
        src={"inlined_requests": {"contents": TEXTS, "config": config}})
    mine = await ours.create_job("gemini-embedding-001", "ours:0", texts=TEXTS, config=config)
    assert mine.name.startswith("batches/") and mine.display_name == "ours:0"
    assert mine.state == "pending"

    def shape(job: dict[str, Any]) -> tuple[Any, ...]:
        return job["model"], job["request_count"], job["est_tokens"]

    jobs = {j["display_name"]: j for j in (await emulator.state())["jobs"]}
    assert shape(jobs["ours:0"]) == shape(jobs["sdk:0"]) == ("models/gemini-embedding-001",
                                                             4, jobs["sdk:0"]["est_tokens"])

    async def done() -> bool:
        return (await ours.get_job(mine.name)).done and (await ours.get_job(str(theirs.name))).done

    await wait_for(done, 30, what="both jobs done")
    got = await ours.get_job(mine.name)
    ref = await sdk.aio.batches.get(name=str(theirs.name))
    assert got.state == "succeeded" and got.inline is not None
    assert ref.dest is not None and ref.dest.inlined_embed_content_responses is not None
    expected = [r.response.embedding.values if r.response and r.response.embedding else None
                for r in ref.dest.inlined_embed_content_responses]
    assert all(v is not None and len(v) == 8 for v in expected)
    assert [r.values.tolist() if r.values is not None else None for r in got.inline] == \
        [np.asarray(v, dtype=np.float32).tolist() for v in expected]
    await ours.close()
