"""Files: paging, get/delete, the 40-character rule, unknown files, bad input, big uploads."""

from __future__ import annotations

import asyncio
import hashlib
import io
import re

from conftest import KEY, ClientFactory
from emu_support import client_error, inline_job, jsonl, upload
from google import genai
from google.genai import types

from sandbox.emulator import Emulator


async def test_files_paging(client: genai.Client) -> None:
    """files.list pages by pageSize and pageToken, newest first, every file once."""
    names = [(await upload(client, jsonl([f"f{i}"]), f"f{i}")).name for i in range(7)]
    pager = await client.aio.files.list(config={"page_size": 3})
    assert len(pager.page) == 3
    listed = [f.name async for f in pager]
    assert listed == list(reversed(names))


async def test_batches_paging(client: genai.Client) -> None:
    """batches.list pages operations by pageSize and pageToken, every job once."""
    names = [(await inline_job(client, [f"b{i}"])).name for i in range(5)]
    pager = await client.aio.batches.list(config={"page_size": 2})
    assert len(pager.page) == 2
    second = await pager.next_page()
    assert len(second) == 2
    listed = [job.name async for job in await client.aio.batches.list(config={"page_size": 2})]
    assert listed == list(reversed(names))


async def test_models_list(client: genai.Client) -> None:
    """models.list pages through the served embedding models."""
    pager = await client.aio.models.list(config={"page_size": 1})
    names = [model.name async for model in pager]
    assert names == ["models/gemini-embedding-001", "models/gemini-embedding-2"]


async def test_file_get_and_delete(client: genai.Client) -> None:
    """A file has a 12-character id and the File fields; after delete, get is the 403."""
    uploaded = await upload(client, jsonl(["g"]), "named")
    assert uploaded.name is not None and re.fullmatch(r"files/[a-z0-9]{12}", uploaded.name)
    got = await client.aio.files.get(name=uploaded.name)
    assert got.display_name == "named" and got.mime_type == "application/jsonl"
    assert got.state == types.FileState.ACTIVE and got.source == types.FileSource.UPLOADED
    assert got.sha256_hash and got.expiration_time and got.download_uri is None
    await client.aio.files.delete(name=uploaded.name)
    error = await client_error(client.aio.files.get(name=uploaded.name))
    file_id = uploaded.name.removeprefix("files/")
    assert (error.code, error.status, error.message) == (
        403, "PERMISSION_DENIED",
        f"You do not have permission to access the File {file_id} or it may not exist.",
    )


async def test_forty_character_rule(emu: Emulator, client: genai.Client) -> None:
    """get/delete of a 42-character output id answer the real 400; download works."""
    job = await client.aio.batches.create_embeddings(
        model="gemini-embedding-001",
        src={"file_name": (await upload(client, jsonl(["o"]))).name},
    )
    await emu.advance(2)
    done = await client.aio.batches.get(name=job.name)
    assert done.dest is not None and done.dest.file_name is not None
    output = done.dest.file_name
    assert len(output.removeprefix("files/")) == 42
    for call, request in ((client.aio.files.get, "GetFileRequest"),
                          (client.aio.files.delete, "DeleteFileRequest")):
        error = await client_error(call(name=output))
        assert (error.code, error.status, error.message) == (
            400, "INVALID_ARGUMENT",
            f"* {request}.name: File ID (name excluding 'files/') cannot be more than"
            " 40 characters.\n",
        )
    assert await client.aio.files.download(file=output)
    listed = [f async for f in await client.aio.files.list()]
    generated = next(f for f in listed if f.name == output)
    assert generated.source == types.FileSource.GENERATED and generated.download_uri


async def test_unknown_file_source(client: genai.Client) -> None:
    """A batch from a file that does not exist is the 403 PERMISSION_DENIED."""
    error = await client_error(client.aio.batches.create_embeddings(
        model="gemini-embedding-001", src={"file_name": "files/doesnotexist"}
    ))
    assert (error.code, error.status) == (403, "PERMISSION_DENIED")
    assert error.message == (
        "You do not have permission to access the File doesnotexist or it may not exist."
    )


async def test_bad_input_is_400(client: genai.Client) -> None:
    """Malformed JSONL, an empty file and an empty item are 400 INVALID_ARGUMENT."""
    for data in (b'{"key": "a", "request": {"content"\n', b"\n\n", b"[1, 2]\n"):
        uploaded = await upload(client, data)
        error = await client_error(client.aio.batches.create_embeddings(
            model="gemini-embedding-001", src={"file_name": uploaded.name}
        ))
        assert (error.code, error.status) == (400, "INVALID_ARGUMENT")
    error = await client_error(inline_job(client, [""]))
    assert (error.code, error.status) == (400, "INVALID_ARGUMENT")


async def test_twenty_megabyte_upload(emu: Emulator, client: genai.Client) -> None:
    """A 20 MB file goes up in three 8 MiB chunks and comes back byte for byte."""
    data = (jsonl(["x" * 1000]) * 21_000)[: 20 * 1000 * 1000]
    uploaded = await client.aio.files.upload(
        file=io.BytesIO(data), config={"mime_type": "application/jsonl"}
    )
    assert uploaded.size_bytes == len(data)
    assert uploaded.name is not None
    assert await client.aio.files.download(file=uploaded.name) == data
    state = await emu.state()
    assert state["calls"][KEY]["files.upload_chunk"] == 3
    assert state["files"][0]["size_bytes"] == len(data)
    assert hashlib.sha256(data).hexdigest()


async def test_twenty_concurrent_clients(emu: Emulator, make_client: ClientFactory) -> None:
    """Twenty clients with their own keys upload and create at once; every job succeeds."""
    keys = [f"key-{i}" for i in range(20)]
    for key in keys:
        await emu.set_key(key, "valid")
    clients = [make_client(key) for key in keys]

    async def work(client: genai.Client, index: int) -> str:
        uploaded = await upload(client, jsonl([f"c{index}-{j}" for j in range(5)], dims=8))
        job = await client.aio.batches.create_embeddings(
            model="gemini-embedding-001", src={"file_name": uploaded.name}
        )
        assert job.name is not None
        return job.name

    names = await asyncio.gather(*(work(c, i) for i, c in enumerate(clients)))
    assert len(set(names)) == 20
    await emu.advance(2)
    done = await asyncio.gather(*(c.aio.batches.get(name=n) for c, n in zip(clients, names,
                                                                              strict=True)))
    assert {job.state for job in done} == {types.JobState.JOB_STATE_SUCCEEDED}
    state = await emu.state()
    assert {job["key"] for job in state["jobs"]} == set(keys)
