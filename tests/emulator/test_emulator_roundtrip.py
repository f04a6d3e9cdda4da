"""Upload, create, poll and download through the unmodified SDK."""

from __future__ import annotations

import asyncio
import io
import json
import re
import sys

from conftest import KEY, ClientFactory
from emu_support import (
    client_error,
    file_job,
    inline_job,
    is_unit,
    jsonl,
    read_lines,
    upload,
)
from google import genai
from google.genai import types

from sandbox.emulator import Emulator, embed


async def test_file_batch_round_trip(emu: Emulator, client: genai.Client) -> None:
    """A file job goes PENDING, RUNNING, SUCCEEDED and its output has its vectors in order."""
    texts = ["alpha", "beta", "gamma", "δέλτα"]
    job = await file_job(client, texts, dims=16, display_name="b1:0")
    assert re.fullmatch(r"batches/[a-z0-9]{36}", job.name)
    assert job.state == types.JobState.JOB_STATE_PENDING
    assert job.display_name == "b1:0"
    assert job.model == "models/gemini-embedding-001"

    await emu.advance(0.6)
    running = await client.aio.batches.get(name=job.name)
    assert running.state == types.JobState.JOB_STATE_RUNNING
    assert running.dest is None

    await emu.advance(1.0)
    done = await client.aio.batches.get(name=job.name)
    assert done.state == types.JobState.JOB_STATE_SUCCEEDED
    assert done.end_time is not None and done.create_time is not None
    assert done.dest is not None
    assert done.dest.file_name == f"files/batch-{job.name.removeprefix('batches/')}"

    lines = read_lines(await client.aio.files.download(file=done.dest.file_name))
    assert [line["key"] for line in lines] == ["r0", "r1", "r2", "r3"]
    vectors = [line["response"]["embedding"]["values"] for line in lines]
    assert all(len(v) == 16 and not is_unit(v) for v in vectors)  # a prefix, below 3072
    assert len({tuple(v) for v in vectors}) == 4

    online = await client.aio.models.embed_content(
        model="gemini-embedding-001", contents=texts, config={"output_dimensionality": 16}
    )
    assert [e.values for e in online.embeddings or []] == vectors


async def test_inline_batch_round_trip(emu: Emulator, client: genai.Client) -> None:
    """An inline job returns inlined embed responses, default 3072 dims, deterministic."""
    job = await inline_job(client, ["one", "two", "one"])
    await emu.advance(2)
    done = await client.aio.batches.get(name=job.name)
    assert done.state == types.JobState.JOB_STATE_SUCCEEDED
    assert done.dest is not None and done.dest.file_name is None
    responses = done.dest.inlined_embed_content_responses or []
    vectors = [r.response.embedding.values for r in responses
               if r.response and r.response.embedding]
    assert len(vectors) == 3
    assert all(v is not None and len(v) == 3072 and is_unit(v) for v in vectors)
    assert vectors[0] == vectors[2] != vectors[1]


async def test_dimensionality_and_models(client: genai.Client) -> None:
    """Dims default to the model's, shorter ones are honoured, out-of-range ones are a 400."""
    for model in ("gemini-embedding-001", "gemini-embedding-2"):
        wide = await client.aio.models.embed_content(model=model, contents=["x"])
        assert len((wide.embeddings or [])[0].values or []) == 3072
    for dims in (0, 3073):
        error = await client_error(client.aio.models.embed_content(
            model="gemini-embedding-001", contents=["x"], config={"output_dimensionality": dims}
        ))
        assert (error.code, error.status) == (400, "INVALID_ARGUMENT")
    error = await client_error(inline_job(client, ["x"], dims=3073, model="gemini-embedding-2"))
    assert (error.code, error.status) == (400, "INVALID_ARGUMENT")


async def test_unknown_model_is_404(client: genai.Client) -> None:
    """An unknown model answers 404 NOT_FOUND with the real wording, on every model call."""
    error = await client_error(inline_job(client, ["x"], model="no-such-model"))
    assert (error.code, error.status) == (404, "NOT_FOUND")
    assert error.message == (
        "models/no-such-model is not found for API version v1beta, or is not supported for"
        " asyncBatchEmbedContent. Call ListModels to see the list of available models and"
        " their supported methods."
    )
    error = await client_error(client.aio.models.get(model="no-such-model"))
    assert error.code == 404


async def test_camel_case_input_and_keyless_lines(emu: Emulator, client: genai.Client) -> None:
    """camelCase request fields are read, and a line without a key gets an output without one."""
    data = jsonl(["a"], dims=5, snake=False) + b'{"request": {"content": {"parts": [{"text": "b"}]}}}\n'
    uploaded = await upload(client, data)
    job = await client.aio.batches.create_embeddings(
        model="gemini-embedding-001", src={"file_name": uploaded.name}
    )
    await emu.advance(2)
    done = await client.aio.batches.get(name=job.name)
    assert done.dest is not None and done.dest.file_name is not None
    first, second = read_lines(await client.aio.files.download(file=done.dest.file_name))
    assert first["key"] == "r0" and len(first["response"]["embedding"]["values"]) == 5
    assert "key" not in second and len(second["response"]["embedding"]["values"]) == 3072


async def test_other_api_versions(emu: Emulator, make_client: ClientFactory) -> None:
    """v1 and v1alpha serve the same files, batches and models as v1beta."""
    for version in ("v1", "v1alpha"):
        client = make_client(api_version=version)
        uploaded = await upload(client, jsonl(["v"]))
        assert uploaded.uri is not None and f"/{version}/files/" in uploaded.uri
        job = await client.aio.batches.create_embeddings(
            model="gemini-embedding-001", src={"file_name": uploaded.name}
        )
        await emu.advance(2)
        done = await client.aio.batches.get(name=job.name)
        assert done.state == types.JobState.JOB_STATE_SUCCEEDED
        model = await client.aio.models.get(model="gemini-embedding-001")
        assert model.name == "models/gemini-embedding-001"
    state = await emu.state()
    assert state["calls"][KEY]["batches.create"] == 2


async def test_sync_client_in_thread(emu: Emulator, client: genai.Client) -> None:
    """The sync client (httpx2) uploads, creates, polls and downloads from a worker thread."""

    def run() -> tuple[types.BatchJob, types.File]:
        uploaded = client.files.upload(
            file=io.BytesIO(jsonl(["sync"], dims=4)), config={"mime_type": "application/jsonl"}
        )
        job = client.batches.create_embeddings(
            model="gemini-embedding-001", src={"file_name": uploaded.name}
        )
        return job, uploaded

    job, uploaded = await asyncio.to_thread(run)
    assert uploaded.size_bytes == len(jsonl(["sync"], dims=4))
    await emu.advance(2)
    done = await asyncio.to_thread(client.batches.get, name=job.name)
    assert done.dest is not None and done.dest.file_name is not None
    data = await asyncio.to_thread(client.files.download, file=done.dest.file_name)
    (line,) = read_lines(data)
    assert line["response"]["embedding"]["values"] == embed.vector("gemini-embedding-001",
                                                                   "sync", 4)


_HTTPX_SCRIPT = r"""
import asyncio, io, json, sys, urllib.request
sys.modules["aiohttp"] = None
from google import genai
from google.genai import errors, types

url, key = sys.argv[1], sys.argv[2]

def admin(path, body):
    request = urllib.request.Request(f"{url}/_emulator/{path}", data=json.dumps(body).encode(),
                                     method="POST" if path == "advance" else "PUT")
    urllib.request.urlopen(request).read()

async def main():
    client = genai.Client(api_key=key, http_options=types.HttpOptions(
        base_url=url, api_version="v1beta", timeout=30000))
    assert not client._api_client._use_aiohttp()
    line = json.dumps({"key": "k", "request": {"content": {"parts": [{"text": "h"}]},
                       "output_dimensionality": 6}}).encode()
    uploaded = await client.aio.files.upload(file=io.BytesIO(line),
                                             config={"mime_type": "application/jsonl"})
    job = await client.aio.batches.create_embeddings(model="gemini-embedding-001",
                                                     src={"file_name": uploaded.name})
    admin("advance", {"seconds": 2})
    done = await client.aio.batches.get(name=job.name)
    out = json.loads(await client.aio.files.download(file=done.dest.file_name))
    admin("keys/" + key, {"state": "expired"})
    try:
        await client.aio.batches.get(name=job.name)
    except errors.ClientError as error:
        failure = [error.code, error.status, error.message]
    print(json.dumps({"state": done.state.value, "dims": len(out["response"]["embedding"]["values"]),
                      "error": failure}))
    await client.aio.aclose()

asyncio.run(main())
"""


async def test_async_client_without_aiohttp(emu: Emulator) -> None:
    """With aiohttp unimportable the SDK's httpx2 path round-trips and parses errors too."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _HTTPX_SCRIPT, emu.url, "test-key-1",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, stderr.decode()
    result = json.loads(stdout.decode().strip().splitlines()[-1])
    assert result == {
        "state": "JOB_STATE_SUCCEEDED",
        "dims": 6,
        "error": [400, "INVALID_ARGUMENT", "API key expired. Please renew the API key."],
    }
