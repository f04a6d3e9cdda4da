"""The model catalogue, and gemini-embedding-2's one-vector-per-request semantics."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from conftest import KEY
from emu_support import client_error, inline_job
from google import genai

from sandbox.emulator import Emulator, embed

MODEL = "gemini-embedding-2"


@pytest.fixture
async def http(emu: Emulator) -> AsyncIterator[Any]:
    """POST a JSON body to `models/{model}:{method}`; returns (status, body)."""
    async with aiohttp.ClientSession(headers={"x-goog-api-key": KEY}) as session:

        async def post(model: str, method: str, body: dict[str, Any]) -> tuple[int, Any]:
            url = f"{emu.url}/v1beta/models/{model}:{method}"
            async with session.post(url, json=body) as response:
                return response.status, await response.json()

        yield post


def _content(*texts: str) -> dict[str, Any]:
    return {"parts": [{"text": t} for t in texts], "role": "user"}


async def test_sdk_list_on_gemini_embedding_2_is_one_vector(client: genai.Client) -> None:
    """The SDK sends a list of texts on gemini-embedding-2 as one multi-part Content, and
    the answer is one vector: that of the texts joined (the trap batchyard must avoid)."""
    got = await client.aio.models.embed_content(model=MODEL, contents=["a", "b", "c"])
    assert [e.values for e in got.embeddings or []] == [embed.vector(MODEL, "abc", 3072)]
    # gemini-embedding-001 keeps one request, and one vector, per text.
    old = await client.aio.models.embed_content(model="gemini-embedding-001",
                                                contents=["a", "b", "c"])
    assert [e.values for e in old.embeddings or []] == [
        embed.vector("gemini-embedding-001", t, 3072) for t in "abc"]


async def test_embed_content_of_several_parts(http: Any) -> None:
    """:embedContent over one Content of several parts is one vector of the joined text."""
    status, body = await http(MODEL, "embedContent", {"content": _content("x", "y")})
    assert status == 200
    assert body == {"embedding": {"values": embed.vector(MODEL, "xy", 3072)}}


async def test_batch_embed_one_request_per_text(http: Any) -> None:
    """batchEmbedContents with one request per text gives one vector per request, in order."""
    texts = ["one", "two", "three"]
    requests = [{"model": f"models/{MODEL}", "content": _content(t), "outputDimensionality": 256}
                for t in texts]
    status, body = await http(MODEL, "batchEmbedContents", {"requests": requests})
    assert status == 200
    assert [e["values"] for e in body["embeddings"]] == [embed.vector(MODEL, t, 256) for t in texts]


async def test_models_get_serves_gemini_embedding_2(client: genai.Client) -> None:
    """models.get knows gemini-embedding-2, with the online and batch methods."""
    model = await client.aio.models.get(model=MODEL)
    assert model.name == f"models/{MODEL}" and model.input_token_limit == 8192
    assert {"embedContent", "batchEmbedContents", "asyncBatchEmbedContent"} <= set(
        model.supported_actions or [])


@pytest.mark.parametrize("retired", ["text-embedding-004", "gemini-embedding-exp-03-07"])
async def test_retired_models_are_404(client: genai.Client, http: Any, retired: str) -> None:
    """Retired models answer 404 NOT_FOUND like any unknown model, on every call."""
    for call in (client.aio.models.get(model=retired),
                 client.aio.models.embed_content(model=retired, contents=["x"]),
                 inline_job(client, ["x"], model=retired)):
        error = await client_error(call)
        assert (error.code, error.status) == (404, "NOT_FOUND")
    status, body = await http(retired, "embedContent", {"content": _content("x")})
    assert (status, body["error"]["status"]) == (404, "NOT_FOUND")


async def test_online_drop_one(emu: Emulator, http: Any) -> None:
    """online_drop_one answers batchEmbedContents with one embedding too few."""
    await emu.set_faults(online_drop_one=True)
    requests = [{"content": _content(t)} for t in ("p", "q", "r")]
    status, body = await http(MODEL, "batchEmbedContents", {"requests": requests})
    assert status == 200
    assert [e["values"] for e in body["embeddings"]] == [embed.vector(MODEL, t, 3072)
                                                         for t in ("p", "q")]
    await emu.set_faults()
    status, body = await http(MODEL, "batchEmbedContents", {"requests": requests})
    assert len(body["embeddings"]) == 3
