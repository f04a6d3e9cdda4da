"""The subprocess launcher and command line: start fast, serve the sync SDK, always reap."""

from __future__ import annotations

import asyncio
import io
import time

import pytest
from emu_support import jsonl, read_lines
from google import genai
from google.genai import types

from sandbox import _proc
from sandbox.emulator.testing import EmulatorProcess, launch_emulator


async def test_launch_and_sync_client() -> None:
    """launch_emulator starts in well under two seconds and serves the blocking sync client."""
    started = time.monotonic()
    async with launch_emulator(keys=("k1",), job_pending_s=0.2, job_running_s=0.3) as emu:
        assert time.monotonic() - started < 2.0
        assert (await emu.faults())["job_pending_s"] == 0.2
        client = genai.Client(api_key="k1", http_options=types.HttpOptions(
            base_url=emu.url, api_version="v1beta", timeout=30000))
        uploaded = client.files.upload(
            file=io.BytesIO(jsonl(["s1", "s2"], dims=3)), config={"mime_type": "application/jsonl"}
        )
        job = client.batches.create_embeddings(
            model="gemini-embedding-001", src={"file_name": uploaded.name}
        )
        await emu.advance(1)
        done = client.batches.get(name=job.name)
        assert done.state == types.JobState.JOB_STATE_SUCCEEDED
        assert done.dest is not None and done.dest.file_name is not None
        lines = read_lines(client.files.download(file=done.dest.file_name))
        assert [line["key"] for line in lines] == ["r0", "r1"]
        client.close()
        process = emu.process
    assert process.returncode is not None


async def test_launch_on_a_given_port() -> None:
    """--port P listens on P and the printed URL says so."""
    port = _proc.free_port()
    async with launch_emulator(port=port) as emu:
        assert emu.url == f"http://127.0.0.1:{port}"
        assert (await emu.state())["keys"] == {}


async def test_reaped_on_error_and_cancellation() -> None:
    """The subprocess is stopped and reaped when the body raises or is cancelled."""
    seen: list[EmulatorProcess] = []
    with pytest.raises(RuntimeError, match="boom"):
        async with launch_emulator() as emu:
            seen.append(emu)
            raise RuntimeError("boom")
    assert seen[0].process.returncode is not None

    ready = asyncio.Event()

    async def hold() -> None:
        async with launch_emulator() as emu:
            seen.append(emu)
            ready.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(hold())
    await ready.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert seen[1].process.returncode is not None
