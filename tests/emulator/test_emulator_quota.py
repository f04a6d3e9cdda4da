"""Quota faults on batch creation, cancel, delete, and the emulator clock."""

from __future__ import annotations

import math

from emu_support import client_error, file_job, inline_job
from google import genai
from google.genai import types

from sandbox.emulator import Emulator

EXHAUSTED = "Resource has been exhausted (e.g. check quota)."


async def test_max_active_jobs(emu: Emulator, client: genai.Client) -> None:
    """Past max_active_jobs a create is a 429 without RetryInfo until a job finishes."""
    await emu.set_faults(max_active_jobs=2)
    await inline_job(client, ["a"])
    await inline_job(client, ["b"])
    error = await client_error(inline_job(client, ["c"]))
    assert (error.code, error.status, error.message) == (429, "RESOURCE_EXHAUSTED", EXHAUSTED)
    assert "details" not in error.details["error"]
    await emu.advance(2)
    assert (await inline_job(client, ["c"])).state == types.JobState.JOB_STATE_PENDING


async def test_estimated_tokens(emu: Emulator, client: genai.Client) -> None:
    """A job's estimate is the UTF-8 byte length of its texts over 4, rounded up."""
    texts = ["héllo", "wörld!", "a"]
    await file_job(client, texts)
    (job,) = (await emu.state())["jobs"]
    assert job["est_tokens"] == math.ceil(sum(len(t.encode()) for t in texts) / 4) == 4
    assert job["request_count"] == 3


async def test_max_job_tokens(emu: Emulator, client: genai.Client) -> None:
    """A job estimated above max_job_tokens is refused with a 429 carrying no RetryInfo."""
    await emu.set_faults(max_job_tokens=10)
    error = await client_error(inline_job(client, ["x" * 41]))
    assert (error.code, error.status) == (429, "RESOURCE_EXHAUSTED")
    types_ = {d["@type"] for d in error.details["error"]["details"]}
    assert "type.googleapis.com/google.rpc.RetryInfo" not in types_
    assert (await inline_job(client, ["x" * 40])).name


async def test_max_enqueued_tokens(emu: Emulator, client: genai.Client) -> None:
    """Unfinished jobs of a model plus the new one may not pass max_enqueued_tokens."""
    await emu.set_faults(max_enqueued_tokens=20)
    await inline_job(client, ["x" * 40])
    await inline_job(client, ["x" * 40, "x" * 4], model="gemini-embedding-2")
    error = await client_error(inline_job(client, ["x" * 44]))
    assert error.code == 429 and error.message is not None
    assert "batch_enqueued_tokens" in error.message
    assert (await inline_job(client, ["x" * 40])).name
    await emu.advance(2)
    assert (await inline_job(client, ["x" * 80])).name


async def test_create_429_for_s(emu: Emulator, client: genai.Client) -> None:
    """create_429_for_s refuses every create until that much emulator time has passed."""
    await emu.set_faults(create_429_for_s=600)
    for _ in range(3):
        error = await client_error(inline_job(client, ["q"]))
        assert (error.code, error.message) == (429, EXHAUSTED)
        assert "details" not in error.details["error"]
    assert (await client.aio.models.get(model="gemini-embedding-001")).name
    await emu.advance(601)
    assert (await inline_job(client, ["q"])).name


async def test_cancel(emu: Emulator, client: genai.Client) -> None:
    """Cancel ends a pending job as CANCELLED once cancel_s has passed, frees its slot, and
    leaves a finished job be."""
    await emu.set_faults(max_active_jobs=1)
    job = await file_job(client, ["c"])
    assert await client.aio.batches.cancel(name=job.name) is None
    await emu.advance(0.5)
    cancelled = await client.aio.batches.get(name=job.name)
    assert cancelled.state == types.JobState.JOB_STATE_CANCELLED
    assert cancelled.end_time is not None and cancelled.dest is None
    other = await inline_job(client, ["d"])
    await emu.advance(2)
    await client.aio.batches.cancel(name=other.name)
    assert (await client.aio.batches.get(name=other.name)).state == (
        types.JobState.JOB_STATE_SUCCEEDED
    )


async def test_delete_batch(client: genai.Client) -> None:
    """A deleted job is gone: get answers 404 NOT_FOUND."""
    job = await inline_job(client, ["gone"])
    await client.aio.batches.delete(name=job.name)
    error = await client_error(client.aio.batches.get(name=job.name))
    assert (error.code, error.status) == (404, "NOT_FOUND")


async def test_advance_moves_the_job_clock(emu: Emulator, client: genai.Client) -> None:
    """Jobs move only as the clock does; advance moves them and their timestamps."""
    await emu.set_faults(job_pending_s=3600, job_running_s=3600)
    job = await inline_job(client, ["slow"])
    assert (await client.aio.batches.get(name=job.name)).state == (
        types.JobState.JOB_STATE_PENDING
    )
    before = (await emu.state())["now"]
    after = await emu.advance(3601)
    assert after - before >= 3601
    running = await client.aio.batches.get(name=job.name)
    assert running.state == types.JobState.JOB_STATE_RUNNING
    await emu.advance(3600)
    done = await client.aio.batches.get(name=job.name)
    assert done.state == types.JobState.JOB_STATE_SUCCEEDED
    assert done.create_time is not None and done.end_time is not None
    assert abs((done.end_time - done.create_time).total_seconds() - 7200) < 0.001
