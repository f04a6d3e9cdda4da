"""Job lifetimes as the real API has them: cancelling before cancelled, expiry at 48 h."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from conftest import KEY
from emu_support import client_error, file_job, inline_job
from google import genai
from google.genai import types

from sandbox.emulator import Emulator, jobs
from sandbox.emulator.admin_client import AdminError
from sandbox.emulator.catalogue import MODELS
from sandbox.emulator.inputs import Item

HOUR = 3600.0
NOT_A_JOB_STATE = "BATCH_STATE_CANCELLING is not a valid JobState"


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain aiohttp client session."""
    async with aiohttp.ClientSession() as session:
        yield session


async def _operation(emu: Emulator, http: aiohttp.ClientSession, name: str) -> dict[str, Any]:
    async with http.get(f"{emu.url}/v1beta/{name}", headers={"x-goog-api-key": KEY}) as response:
        assert response.status == 200
        body: dict[str, Any] = await response.json()
        return body


async def _unmapped_state(client: genai.Client, name: str) -> str | None:
    """The state `batches.get` reports for a job, which must be one the SDK warns of."""
    with pytest.warns(UserWarning, match=NOT_A_JOB_STATE):
        job = await client.aio.batches.get(name=name)
    return job.state.value if job.state else None


def _job(*, pending_s: float = 0.5, running_s: float = 0.5, outcome: str = "succeeded") -> jobs.Job:
    return jobs.Job(id="a" * 36, seq=1, model=MODELS[0], display_name="b:0", key="k",
                    items=[Item(key=None, text="t", dims=4)] * 4, input_config={},
                    input_file=None, created=0.0, pending_s=pending_s, running_s=running_s,
                    outcome=outcome, seed=1, item_error_rate=0.0, bad_vector=None,
                    bad_vector_rate=1.0, est_tokens=1)


async def test_sdk_sees_cancelling_then_cancelled(emu: Emulator, client: genai.Client) -> None:
    """After a cancel the SDK reports an unmapped BATCH_STATE_CANCELLING (with a
    UserWarning, not JOB_STATE_CANCELLING) and no end time; cancel_s later, CANCELLED."""
    await emu.set_faults(job_pending_s=10, job_running_s=20, cancel_s=30)
    job = await inline_job(client, ["x"])
    await emu.advance(15)
    assert await client.aio.batches.cancel(name=job.name) is None
    with pytest.warns(UserWarning, match=NOT_A_JOB_STATE):
        cancelling = await client.aio.batches.get(name=job.name)
    assert cancelling.state is not None
    assert cancelling.state.value == "BATCH_STATE_CANCELLING"
    assert cancelling.state != types.JobState.JOB_STATE_CANCELLING
    assert cancelling.end_time is None and cancelling.dest is None
    await emu.advance(29)
    assert await _unmapped_state(client, job.name) == "BATCH_STATE_CANCELLING"
    await emu.advance(2)
    cancelled = await client.aio.batches.get(name=job.name)
    assert cancelled.state == types.JobState.JOB_STATE_CANCELLED
    assert cancelled.dest is None
    assert cancelled.create_time is not None and cancelled.end_time is not None
    assert abs((cancelled.end_time - cancelled.create_time).total_seconds() - 45) < 1


async def test_cancelling_operation_is_not_done(
    emu: Emulator, client: genai.Client, http: aiohttp.ClientSession
) -> None:
    """While cancelling, the Operation has no done, error or output and its counts stand
    still; once cancelled it is done with error code 1 and no output."""
    await emu.set_faults(job_pending_s=10, job_running_s=100, cancel_s=60)
    job = await inline_job(client, ["a", "b", "c", "d"])
    await emu.advance(60)  # half the running time: 2 of 4 done
    await client.aio.batches.cancel(name=job.name)
    assert job.name is not None
    for _ in range(2):
        operation = await _operation(emu, http, job.name)
        assert operation["metadata"]["state"] == "BATCH_STATE_CANCELLING"
        assert not {"done", "error", "response"} & operation.keys()
        assert "output" not in operation["metadata"] and "endTime" not in operation["metadata"]
        assert operation["metadata"]["batchStats"] == {
            "requestCount": "4", "successfulRequestCount": "2", "pendingRequestCount": "2"}
        await emu.advance(30)
    operation = await _operation(emu, http, job.name)
    assert operation["metadata"]["state"] == "BATCH_STATE_CANCELLED"
    assert operation["done"] is True
    assert operation["error"] == {"code": 1, "message": "Batch was cancelled."}
    assert "response" not in operation and "output" not in operation["metadata"]


async def test_cancelling_past_its_due_time_never_succeeds(
    emu: Emulator, client: genai.Client
) -> None:
    """A job cancelled just before it would finish ends CANCELLED, with no output file."""
    await emu.set_faults(job_pending_s=1, job_running_s=9, cancel_s=20)
    job = await file_job(client, ["a", "b"])
    await emu.advance(9)
    await client.aio.batches.cancel(name=job.name)
    await emu.advance(5)  # past the job's own end: still cancelling
    state = await emu.state()
    assert [j["state"] for j in state["jobs"]] == ["BATCH_STATE_CANCELLING"]
    await emu.advance(20)
    ended = await client.aio.batches.get(name=job.name)
    assert ended.state == types.JobState.JOB_STATE_CANCELLED and ended.dest is None
    state = await emu.state()
    assert [j["output_file"] for j in state["jobs"]] == [None]
    assert [f["source"] for f in state["files"]] == ["UPLOADED"]


async def test_second_cancel_and_terminal_cancel_change_nothing(
    emu: Emulator, client: genai.Client
) -> None:
    """A second cancel does not put off CANCELLED; a cancel of a finished job leaves it be."""
    await emu.set_faults(job_pending_s=100, cancel_s=10)
    job = await inline_job(client, ["a"])
    await client.aio.batches.cancel(name=job.name)
    await emu.advance(6)
    await client.aio.batches.cancel(name=job.name)
    assert await _unmapped_state(client, job.name) == "BATCH_STATE_CANCELLING"
    await emu.advance(6)
    cancelled = await client.aio.batches.get(name=job.name)
    assert cancelled.state == types.JobState.JOB_STATE_CANCELLED
    await emu.advance(1000)
    await client.aio.batches.cancel(name=job.name)
    again = await client.aio.batches.get(name=job.name)
    assert again.state == types.JobState.JOB_STATE_CANCELLED
    assert again.end_time == cancelled.end_time


async def test_cancelling_job_holds_its_slot(emu: Emulator, client: genai.Client) -> None:
    """A cancelling job still counts against max_active_jobs: a create answers the bare
    429 (no details, no RetryInfo) until the job is CANCELLED."""
    await emu.set_faults(max_active_jobs=1, cancel_s=30)
    job = await inline_job(client, ["a"])
    await client.aio.batches.cancel(name=job.name)
    error = await client_error(inline_job(client, ["b"]))
    assert (error.code, error.status) == (429, "RESOURCE_EXHAUSTED")
    assert error.details == {"error": {
        "code": 429, "message": "Resource has been exhausted (e.g. check quota).",
        "status": "RESOURCE_EXHAUSTED"}}
    await emu.advance(31)
    assert (await inline_job(client, ["b"])).state == types.JobState.JOB_STATE_PENDING


async def test_cancel_s_fault(emu: Emulator, client: genai.Client) -> None:
    """cancel_s defaults to 0.5, must not be negative, and 0 cancels at once."""
    assert (await emu.faults())["cancel_s"] == 0.5
    with pytest.raises(AdminError, match="400"):
        await emu.set_faults(cancel_s=-1)
    await emu.set_faults(cancel_s=0, job_pending_s=100)
    job = await inline_job(client, ["a"])
    await client.aio.batches.cancel(name=job.name)
    assert (await client.aio.batches.get(name=job.name)).state == (
        types.JobState.JOB_STATE_CANCELLED
    )


async def test_sdk_sees_a_long_job_expire_at_48_hours(
    emu: Emulator, client: genai.Client, http: aiohttp.ClientSession
) -> None:
    """A job whose running time passes 48 h ends EXPIRED at 48 h: done, error code 4,
    no results."""
    await emu.set_faults(job_pending_s=60, job_running_s=60 * HOUR)
    job = await file_job(client, ["a", "b"])
    await emu.advance(48 * HOUR - 5)
    assert (await client.aio.batches.get(name=job.name)).state == types.JobState.JOB_STATE_RUNNING
    await emu.advance(10)
    expired = await client.aio.batches.get(name=job.name)
    assert expired.state == types.JobState.JOB_STATE_EXPIRED and expired.dest is None
    assert expired.create_time is not None and expired.end_time is not None
    assert abs((expired.end_time - expired.create_time).total_seconds() - 48 * HOUR) < 1
    assert job.name is not None
    operation = await _operation(emu, http, job.name)
    assert operation["done"] is True
    assert operation["error"] == {"code": 4,
                                  "message": "Batch expired before it could be processed."}
    assert "response" not in operation and "output" not in operation["metadata"]
    assert [f["source"] for f in (await emu.state())["files"]] == ["UPLOADED"]


async def test_never_ending_jobs_expire(emu: Emulator, client: genai.Client) -> None:
    """job_outcome "never" and a pending time past 48 h both end EXPIRED at 48 h."""
    await emu.set_faults(job_outcome="never", job_pending_s=1, job_running_s=1)
    never = await inline_job(client, ["a"])
    await emu.set_faults(job_pending_s=100 * HOUR)
    queued = await inline_job(client, ["b"])
    await emu.advance(48 * HOUR - 5)
    assert (await client.aio.batches.get(name=never.name)).state == (
        types.JobState.JOB_STATE_RUNNING
    )
    assert (await client.aio.batches.get(name=queued.name)).state == (
        types.JobState.JOB_STATE_PENDING
    )
    await emu.advance(10)
    for job in (never, queued):
        ended = await client.aio.batches.get(name=job.name)
        assert ended.state == types.JobState.JOB_STATE_EXPIRED and ended.dest is None


def test_job_fates() -> None:
    """tick()'s view: a cancelling job is due CANCELLED at its cancel time, never
    SUCCEEDED, unless 48 h come first; an endless job is due EXPIRED at 48 h."""
    job = _job()
    job.cancel(0.7, 1.0)
    assert job.fate() == (1.7, jobs.CANCELLED)
    assert job.state_at(1.0) == job.state_at(1.69) == jobs.CANCELLING
    assert "done" not in job.operation(5.0, lambda t: t)
    job.cancel(1.2, 1.0)
    assert job.fate() == (1.7, jobs.CANCELLED)

    slow = _job()
    slow.cancel(47 * HOUR, 2 * HOUR)
    assert slow.fate() == (48 * HOUR, jobs.EXPIRED)

    assert _job(outcome="never").fate() == (48 * HOUR, jobs.EXPIRED)
    assert _job(running_s=48 * HOUR).fate() == (48 * HOUR, jobs.EXPIRED)
    assert _job(running_s=48 * HOUR - 1).fate() == (48 * HOUR - 0.5, jobs.SUCCEEDED)
