"""gemini-embedding-2 end to end: every item its own vector, online and through jobs.

The SDK's `models.embed_content` sends a list of texts on this model as one multi-part
Content, one vector (GEMINI_API.md §9.3); batchyard must not store that vector for item 0.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from google import genai

from consumers.errors import PermanentError
from consumers.gemini.client import Gemini
from consumers.gemini.keys import KeySource
from consumers.settings import Settings
from events import subjects
from events.payloads import Dead, decode
from sandbox.emulator import embed
from tests.conftest import KEY
from tests.harness import Stack, batch, stream_messages, submit, wait_finished

MODEL = "gemini-embedding-2"
DIMS = 16


def _cosine(stored: list[float], text: str, model: str = MODEL) -> float:
    # Stored vectors may be renormalised: compare directions, not values.
    want = np.asarray(embed.vector(model, text, len(stored)), dtype=np.float64)
    got = np.asarray(stored, dtype=np.float64)
    return float(got @ want / (np.linalg.norm(got) * np.linalg.norm(want)))


async def test_embed_is_one_vector_per_text_on_every_model(emulator: Any) -> None:
    """Gemini.embed answers one vector per text where the SDK's list call answers one in
    all on gemini-embedding-2, and says on the wire what the SDK says on
    gemini-embedding-001 (same vectors for the same config)."""
    ours = Gemini(Settings.from_env({"GEMINI_BASE_URL": emulator.url}), KeySource(KEY))
    sdk = genai.Client(api_key=KEY, http_options={"base_url": emulator.url,
                                                  "api_version": "v1beta"})
    texts = ["a", "b", "c"]
    config: Any = {"task_type": "RETRIEVAL_DOCUMENT", "output_dimensionality": DIMS}
    joined = await sdk.aio.models.embed_content(model=MODEL, contents=texts, config=config)
    assert len(joined.embeddings or []) == 1
    got = await ours.embed(MODEL, texts, config)
    assert [_cosine(v or [], t) > 0.999 for v, t in zip(got, texts, strict=True)] == [True] * 3
    old = await sdk.aio.models.embed_content(model="gemini-embedding-001", contents=texts,
                                             config=config)
    assert await ours.embed("gemini-embedding-001", texts, config) == [
        e.values for e in old.embeddings or []]
    try:
        await ours.embed("text-embedding-004", texts)
        raise AssertionError("a retired model must be refused")
    except PermanentError as exc:
        assert exc.code == 404
    await ours.close()
    await sdk.aio.aclose()


async def _stored(stack: Stack, batch_id: str) -> dict[str, list[float]]:
    db = await stack.db()
    rows = await db.fetch("SELECT item_id, model, dims, embedding FROM batchyard.embeddings "
                          "WHERE batch_id = $1", batch_id)
    await db.close()
    assert {(r["model"], r["dims"]) for r in rows} <= {(MODEL, DIMS)}
    return {r["item_id"]: list(r["embedding"]) for r in rows}


async def test_online_and_batch_paths_give_each_item_its_own_vector(stack: Stack) -> None:
    """A batch under the online threshold and one over it, both on gemini-embedding-2:
    each stored vector points where the emulator's vector of that item's text points."""
    await stack.pod("submit", "poll")
    nc = await stack.nc()
    online = batch("g2-online", 10, model=MODEL, output_dimensionality=DIMS)
    jobbed = batch("g2-batch", 25, model=MODEL, output_dimensionality=DIMS)
    for req in (online, jobbed):
        await submit(nc, req)
    assert await wait_finished(stack, 2, timeout=60) == {"succeeded": 2}
    for req in (online, jobbed):
        stored = await _stored(stack, req.batch_id)
        assert sorted(stored) == sorted(item.id for item in req.items or [])
        for item in req.items or []:
            assert _cosine(stored[item.id], item.text) > 0.999, item.id
    state = await stack.emulator.state()
    assert state["calls"][stack.key].get("models.batchEmbedContents") == 1
    assert [j["display_name"] for j in state["jobs"]] == ["g2-batch:0"]
    db = await stack.db()
    paths = dict(await db.fetch("SELECT batch_id, embed_path FROM batchyard.batches"))
    assert paths == {"g2-online": "online", "g2-batch": "batch"}
    await db.close()
    await nc.close()


async def test_an_online_answer_one_short_stores_nothing(stack: Stack) -> None:
    """batchEmbedContents answering one vector too few fails every item of that call for
    the attempt (never padded, never shifted); when every attempt is short the items end
    dead and no vector is stored."""
    await stack.emulator.set_faults(online_drop_one=True)
    await stack.pod("submit", "poll", BATCHYARD_MAX_ITEM_ATTEMPTS="2")
    nc = await stack.nc()
    await submit(nc, batch("g2-short", 5, model=MODEL, output_dimensionality=DIMS))
    assert await wait_finished(stack, 1, timeout=60) == {"failed": 1}
    assert await _stored(stack, "g2-short") == {}
    db = await stack.db()
    row = await db.fetchrow("SELECT * FROM batchyard.batches")
    assert (row["items_embedded"], row["items_failed"], row["attempt"]) == (0, 5, 1)
    await db.close()
    dead = [decode(m, Dead) for m in await stream_messages(nc, subjects.DEAD)]
    assert [(d.reason, len(d.items or [])) for d in dead] == [("item_attempts_exhausted", 5)]
    calls = (await stack.emulator.state())["calls"][stack.key]
    assert calls.get("models.batchEmbedContents") == 2
    await nc.close()
