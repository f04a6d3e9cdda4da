"""Wire details the SDK cannot show: headers, `?key=`, raw error bodies, size limits."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import aiohttp
import numpy as np
import pytest
from conftest import KEY

from sandbox.emulator import Emulator

JSON = "application/json"


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain aiohttp client session."""
    async with aiohttp.ClientSession() as session:
        yield session


async def _start_upload(emu: Emulator, http: aiohttp.ClientSession, size: int) -> str:
    async with http.post(
        f"{emu.url}/upload/v1beta/files",
        headers={"x-goog-api-key": KEY, "X-Goog-Upload-Protocol": "resumable",
                 "X-Goog-Upload-Command": "start",
                 "X-Goog-Upload-Header-Content-Length": str(size),
                 "X-Goog-Upload-Header-Content-Type": "application/jsonl"},
        json={"file": {"displayName": "raw"}},
    ) as response:
        assert response.status == 200
        assert response.headers["X-Goog-Upload-Status"] == "active"
        raw_names = [name for name, _ in response.raw_headers]
        assert b"x-goog-upload-url" in raw_names
        return response.headers["x-goog-upload-url"]


async def test_upload_url_is_absolute_from_host(emu: Emulator, http: aiohttp.ClientSession) -> None:
    """The start reply's lowercase x-goog-upload-url is absolute, built from the Host header."""
    url = await _start_upload(emu, http, 3)
    assert url.startswith(f"{emu.url}/upload/v1beta/files?upload_id=")


async def test_chunk_errors_carry_upload_status(
    emu: Emulator, http: aiohttp.ClientSession
) -> None:
    """A bad offset and an unknown session are JSON errors with X-Goog-Upload-Status final."""
    url = await _start_upload(emu, http, 3)
    async with http.post(url, data=b"abc", headers={
        "X-Goog-Upload-Command": "upload, finalize", "X-Goog-Upload-Offset": "1"
    }) as response:
        assert response.status == 400 and response.content_type == JSON
        assert response.headers["X-Goog-Upload-Status"] == "final"
        assert (await response.json())["error"]["status"] == "INVALID_ARGUMENT"
    async with http.post(f"{emu.url}/upload/v1beta/files?upload_id=nosuch", data=b"x", headers={
        "X-Goog-Upload-Command": "upload, finalize", "X-Goog-Upload-Offset": "0"
    }) as response:
        assert response.status == 404 and response.content_type == JSON
        assert response.headers["X-Goog-Upload-Status"] == "final"


async def test_key_in_query(emu: Emulator, http: aiohttp.ClientSession) -> None:
    """`?key=` authorises like the header and is counted under that key."""
    async with http.get(f"{emu.url}/v1beta/models/gemini-embedding-001?key={KEY}") as response:
        assert response.status == 200 and response.content_type == JSON
    assert (await emu.state())["calls"][KEY] == {"models.get": 1}


async def test_path_prefix(emu: Emulator, http: aiohttp.ClientSession) -> None:
    """A path prefix in the base URL is honoured."""
    async with http.get(f"{emu.url}/some/prefix/v1beta/models?key={KEY}") as response:
        assert response.status == 200
        assert len((await response.json())["models"]) == 2


async def test_unknown_paths_and_bad_bodies(emu: Emulator, http: aiohttp.ClientSession) -> None:
    """Unknown paths, non-JSON bodies and oversized bodies get JSON errors, never a 500."""
    headers = {"x-goog-api-key": KEY}
    async with http.get(f"{emu.url}/v1beta/nothing-here", headers=headers) as response:
        assert response.status == 404 and response.content_type == JSON
        assert (await response.json())["error"]["status"] == "NOT_FOUND"
    async with http.put(f"{emu.url}/v1beta/files", headers=headers) as response:
        assert response.status == 404 and response.content_type == JSON
    embed = f"{emu.url}/v1beta/models/gemini-embedding-001:batchEmbedContents"
    for body in (b"not json", b"[1]", b'{"requests": "x"}', b'{"requests": [{"content": 5}]}'):
        async with http.post(embed, data=body, headers=headers) as response:
            assert response.status == 400 and response.content_type == JSON
    async with http.post(embed, data=b" " * (65 * 1024**2), headers=headers) as response:
        assert response.status == 400 and response.content_type == JSON
        assert "payload size exceeds" in (await response.json())["error"]["message"]


async def test_healthz(emu: Emulator, http: aiohttp.ClientSession) -> None:
    """GET /_emulator/healthz answers 200 without a key."""
    async with http.get(f"{emu.url}/_emulator/healthz") as response:
        assert response.status == 200


_ODD_BODIES = (
    b"", b"null", b"0", b'"s"', b"[]", b"{}", b"[" * 5000, b"\xff\xfe", b'{"batch": 1}',
    b'{"batch": {"inputConfig": 1}}', b'{"batch": {"inputConfig": {"fileName": 5}}}',
    b'{"batch": {"inputConfig": {"file_name": "files/x", "requests": []}}}',
    b'{"batch": {"inputConfig": {"requests": {"requests": [1, null, {"request": []}]}}}}',
    b'{"batch": {"inputConfig": {"requests": {"requests": []}}}}',
    b'{"requests": [{"content": {"parts": [{"text": "a"}]}, "outputDimensionality": "x"}]}',
    b'{"requests": [{"content": {"parts": [{"text": "a"}]}, "outputDimensionality": 1.5}]}',
    b'{"content": {"parts": [{"text": 7}]}}', b'{"file": {"name": 3, "displayName": []}}',
    b'{"file": {"name": "files/UPPER"}}',
)


async def test_odd_bodies_never_500(emu: Emulator, http: aiohttp.ClientSession) -> None:
    """Every endpoint answers odd bodies and query values with a JSON 2xx/4xx, never a 5xx."""
    base = f"{emu.url}/v1beta"
    targets = [
        ("POST", f"{base}/models/gemini-embedding-001:asyncBatchEmbedContent"),
        ("POST", f"{base}/models/gemini-embedding-001:batchEmbedContents"),
        ("POST", f"{base}/models/gemini-embedding-001:embedContent"),
        ("POST", f"{emu.url}/upload/v1beta/files"),
        ("POST", f"{base}/batches/x:cancel"),
        ("GET", f"{base}/files?pageSize=abc&pageToken=%%%"),
        ("GET", f"{base}/batches?pageSize=-1&pageToken=bm9wZQ"),
        ("PUT", f"{emu.url}/_emulator/faults"),
        ("POST", f"{emu.url}/_emulator/advance"),
        ("PUT", f"{emu.url}/_emulator/keys/k"),
    ]
    upload_headers = {"X-Goog-Upload-Protocol": "resumable", "X-Goog-Upload-Command": "start",
                      "X-Goog-Upload-Header-Content-Length": "zz"}
    for method, url in targets:
        for body in _ODD_BODIES:
            headers = {"x-goog-api-key": KEY, **(upload_headers if "upload" in url else {})}
            async with http.request(method, url, data=body, headers=headers) as response:
                assert response.status < 500, (method, url, body, await response.text())
                assert response.content_type == JSON


async def test_partial_responses(emu: Emulator, http: aiohttp.ClientSession) -> None:
    """`X-Goog-FieldMask` and `?fields=` keep only the fields asked for; a malformed one
    is a 400 before any work, so a create with it makes no job."""
    headers = {"x-goog-api-key": KEY}
    create = f"{emu.url}/v1beta/models/gemini-embedding-001:asyncBatchEmbedContent"
    body = {"batch": {"displayName": "masked", "inputConfig": {"requests": {"requests": [
        {"request": {"content": {"parts": [{"text": "a"}]}}}]}}}}
    async with http.post(create, json=body,
                         headers={**headers, "X-Goog-FieldMask": "name,("}) as response:
        assert response.status == 400 and response.content_type == JSON
        assert (await response.json())["error"]["status"] == "INVALID_ARGUMENT"
    assert (await emu.state())["jobs"] == []
    async with http.post(create, json=body, headers=headers) as response:
        name = (await response.json())["name"]
    await emu.advance(60)
    get = f"{emu.url}/v1beta/{name}"
    async with http.get(get, headers=headers) as response:
        whole = await response.json()
    assert whole["done"] and "response" in whole and "output" in whole["metadata"]
    async with http.get(get, headers={**headers, "X-Goog-FieldMask": "name,metadata"}) as r:
        assert await r.json() == {"name": name, "metadata": whole["metadata"]}
    async with http.get(f"{get}?fields=metadata(state,displayName)", headers=headers) as r:
        assert await r.json() == {"metadata": {"state": "BATCH_STATE_SUCCEEDED",
                                               "displayName": "masked"}}
    async with http.get(f"{emu.url}/v1beta/batches?fields=operations.name",
                        headers=headers) as r:
        assert await r.json() == {"operations": [{"name": name}]}
    async with http.get(f"{get}?fields=a)b", headers=headers) as r:
        assert r.status == 400


async def test_embeddings_are_written_as_float32(emu: Emulator,
                                                 http: aiohttp.ClientSession) -> None:
    """Values carry float32's precision in at most 9 significant digits, as the API writes
    them, and read back as the same float32 the emulator holds."""
    url = f"{emu.url}/v1beta/models/gemini-embedding-001:embedContent"
    async with http.post(url, json={"content": {"parts": [{"text": "x"}]}},
                         headers={"x-goog-api-key": KEY}) as response:
        text = await response.text()
    values = json.loads(text)["embedding"]["values"]
    assert len(values) == 3072
    digits = [len(repr(abs(v)).split("e")[0].replace(".", "").lstrip("0")) for v in values]
    assert max(digits) <= 9 and len(text) < 3072 * 16
    held = np.asarray(values, dtype=np.float32)
    assert np.array_equal(np.asarray(held.astype(np.float64).tolist(), dtype=np.float32), held)
    assert abs(float(np.linalg.norm(held)) - 1.0) < 1e-5
