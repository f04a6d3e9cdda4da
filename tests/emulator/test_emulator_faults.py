"""Injected faults: 5xx, 429, latency, deadlines, job outcomes, item errors, bad vectors."""

from __future__ import annotations

import math
import time

import pytest
from conftest import ClientFactory
from emu_support import client_error, detail, file_job, inline_job, read_lines
from google import genai
from google.genai import errors, types

from sandbox.emulator import Emulator
from sandbox.emulator.admin_client import AdminError

MODEL = "gemini-embedding-001"


async def _outputs(emu: Emulator, client: genai.Client, texts: list[str]) -> list[dict]:
    job = await file_job(client, texts, dims=4)
    await emu.advance(2)
    done = await client.aio.batches.get(name=job.name)
    assert done.dest is not None and done.dest.file_name is not None
    return read_lines(await client.aio.files.download(file=done.dest.file_name))


@pytest.mark.parametrize(
    ("code", "status", "message"),
    [
        (503, "UNAVAILABLE", "The model is overloaded. Please try again later."),
        (500, "INTERNAL", "An internal error has occurred. Please retry or report in"
                          " https://developers.generativeai.google/guide/troubleshooting"),
    ],
)
async def test_error_rate(
    emu: Emulator, client: genai.Client, code: int, status: str, message: str
) -> None:
    """error_rate 1 makes every API call a ServerError with the chosen code's body."""
    await emu.set_faults(error_rate=1, error_codes=[code])
    with pytest.raises(errors.ServerError) as caught:
        await client.aio.models.get(model=MODEL)
    assert (caught.value.code, caught.value.status, caught.value.message) == (code, status, message)


async def test_error_rate_mixes_codes_and_successes(emu: Emulator, client: genai.Client) -> None:
    """error_rate 0.5 fails about half the calls with both default codes, repeatably by seed."""

    async def run() -> list[int]:
        await emu.set_faults(error_rate=0.5, seed=7)
        outcomes = []
        for _ in range(40):
            try:
                await client.aio.models.get(model=MODEL)
                outcomes.append(200)
            except errors.ServerError as error:
                outcomes.append(error.code)
        return outcomes

    first = await run()
    assert set(first) == {200, 500, 503}
    assert await run() == first


async def test_rate_limit_rate(emu: Emulator, client: genai.Client) -> None:
    """rate_limit_rate 1 answers 429 RESOURCE_EXHAUSTED with QuotaFailure, Help and RetryInfo."""
    await emu.set_faults(rate_limit_rate=1, retry_delay_s=7)
    error = await client_error(client.aio.models.embed_content(model=MODEL, contents=["x"]))
    assert (error.code, error.status) == (429, "RESOURCE_EXHAUSTED")
    assert error.message is not None and "Please retry in 7s." in error.message
    assert detail(error, "RetryInfo") == {
        "@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "7s"
    }
    quota = detail(error, "QuotaFailure")
    assert quota is not None and quota["violations"][0]["quotaDimensions"]["model"] == MODEL
    assert detail(error, "Help") is not None


async def test_rate_limit_burst(emu: Emulator, client: genai.Client) -> None:
    """rate_limit_burst N answers the next N calls 429 and then runs out."""
    await emu.set_faults(rate_limit_burst=2, retry_delay_s=0.5)
    for _ in range(2):
        error = await client_error(client.aio.models.get(model=MODEL))
        assert error.code == 429
        assert detail(error, "RetryInfo") == {
            "@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "0.500s"
        }
    assert (await client.aio.models.get(model=MODEL)).name == f"models/{MODEL}"


async def test_latency(emu: Emulator, client: genai.Client) -> None:
    """latency_ms delays every API call; download_latency_ms delays downloads on top."""
    outputs_job = await file_job(client, ["slow"], dims=2)
    await emu.advance(2)
    done = await client.aio.batches.get(name=outputs_job.name)
    assert done.dest is not None and done.dest.file_name is not None
    await emu.set_faults(latency_ms=200, download_latency_ms=300)
    started = time.monotonic()
    await client.aio.models.get(model=MODEL)
    assert time.monotonic() - started >= 0.2
    started = time.monotonic()
    await client.aio.files.download(file=done.dest.file_name)
    assert time.monotonic() - started >= 0.5


async def test_deadline_from_client_timeout(emu: Emulator, make_client: ClientFactory) -> None:
    """A call slower than the client's timeout is answered 504 DEADLINE_EXCEEDED in time."""
    await emu.set_faults(latency_ms=10_000)
    client = make_client(timeout=1000)
    started = time.monotonic()
    with pytest.raises(errors.ServerError) as caught:
        await client.aio.models.get(model=MODEL)
    assert (caught.value.code, caught.value.status) == (504, "DEADLINE_EXCEEDED")
    assert time.monotonic() - started < 1.0


@pytest.mark.parametrize(
    ("outcome", "before", "after"),
    [
        ("failed", types.JobState.JOB_STATE_RUNNING, types.JobState.JOB_STATE_FAILED),
        ("cancelled", types.JobState.JOB_STATE_RUNNING, types.JobState.JOB_STATE_CANCELLED),
        ("expired", types.JobState.JOB_STATE_PENDING, types.JobState.JOB_STATE_EXPIRED),
        ("never", types.JobState.JOB_STATE_RUNNING, types.JobState.JOB_STATE_RUNNING),
    ],
)
async def test_job_outcome(
    emu: Emulator, client: genai.Client, outcome: str, before: types.JobState,
    after: types.JobState,
) -> None:
    """job_outcome decides how a job ends, on the timeline job_pending_s/job_running_s set."""
    await emu.set_faults(job_outcome=outcome, job_pending_s=10, job_running_s=20)
    job = await inline_job(client, ["x"])
    await emu.advance(15)
    assert (await client.aio.batches.get(name=job.name)).state == before
    await emu.advance(1000)
    ended = await client.aio.batches.get(name=job.name)
    assert ended.state == after
    assert ended.dest is None


async def test_job_outcome_rate(emu: Emulator, client: genai.Client) -> None:
    """job_outcome_rate 0.5 fails some jobs and lets the others succeed, drawn at creation."""
    await emu.set_faults(job_outcome="failed", job_outcome_rate=0.5, seed=3)
    names = [(await inline_job(client, [f"t{i}"])).name for i in range(12)]
    await emu.advance(5)
    states = {(await client.aio.batches.get(name=name)).state for name in names}
    assert states == {types.JobState.JOB_STATE_FAILED, types.JobState.JOB_STATE_SUCCEEDED}


async def test_item_errors_in_file_output(emu: Emulator, client: genai.Client) -> None:
    """item_error_rate 1 fails every line with {code, message, status}, keys kept in order."""
    await emu.set_faults(item_error_rate=1)
    lines = await _outputs(emu, client, ["a", "b"])
    assert lines == [
        {"key": "r0", "error": {"code": 500, "message": "Internal error encountered.",
                                "status": "INTERNAL"}},
        {"key": "r1", "error": {"code": 500, "message": "Internal error encountered.",
                                "status": "INTERNAL"}},
    ]


async def test_item_errors_differ_per_execution(emu: Emulator, client: genai.Client) -> None:
    """Item errors are drawn per job run, so a retry of a failed text can succeed."""
    await emu.set_faults(item_error_rate=0.5, seed=11)
    texts = [f"text {i}" for i in range(20)]
    first = await _outputs(emu, client, texts)
    second = await _outputs(emu, client, texts)
    failed_first = {line["key"] for line in first if "error" in line}
    failed_second = {line["key"] for line in second if "error" in line}
    assert failed_first and failed_first != failed_second
    assert any("response" in line for line in second if line["key"] in failed_first)


async def test_inline_item_errors(emu: Emulator, client: genai.Client) -> None:
    """Inline item errors carry no details, so the SDK parses them (mixed and all-failed)."""
    await emu.set_faults(item_error_rate=0.5, seed=1)
    mixed = await inline_job(client, [f"m{i}" for i in range(10)])
    await emu.set_faults(item_error_rate=1)
    failed = await inline_job(client, ["f0", "f1"])
    await emu.advance(2)

    mixed_done = await client.aio.batches.get(name=mixed.name)
    assert mixed_done.dest is not None
    items = mixed_done.dest.inlined_embed_content_responses or []
    errored = [item for item in items if item.error is not None]
    assert len(items) == 10 and 0 < len(errored) < 10
    assert all(item.error and item.error.code == 500 and item.error.details is None
               for item in errored)

    failed_done = await client.aio.batches.get(name=failed.name)
    assert failed_done.dest is not None
    # With no embedding in any item the SDK files the list under inlined_responses.
    assert failed_done.dest.inlined_embed_content_responses is None
    assert [r.error.code for r in failed_done.dest.inlined_responses or [] if r.error] == [500, 500]


@pytest.mark.parametrize("kind", ["wrong_length", "nan", "zeros"])
async def test_bad_vectors(emu: Emulator, client: genai.Client, kind: str) -> None:
    """bad_vector corrupts output vectors in files, inline results and online calls."""
    await emu.set_faults(bad_vector=kind)
    (line,) = await _outputs(emu, client, ["v"])
    inline = await inline_job(client, ["v"], dims=4)
    await emu.advance(2)
    inline_done = await client.aio.batches.get(name=inline.name)
    online = await client.aio.models.embed_content(
        model=MODEL, contents=["v"], config={"output_dimensionality": 4}
    )
    assert inline_done.dest is not None
    inline_item = (inline_done.dest.inlined_embed_content_responses or [])[0]
    assert inline_item.response and inline_item.response.embedding
    for values in (
        line["response"]["embedding"]["values"],
        inline_item.response.embedding.values or [],
        (online.embeddings or [])[0].values or [],
    ):
        if kind == "wrong_length":
            assert len(values) == 3
        elif kind == "nan":
            # "NaN" on the wire, as proto3 JSON writes it; the SDK reads it as a float.
            assert len(values) == 4 and math.isnan(float(values[0]))
        else:
            assert values == [0.0] * 4


async def test_bad_vector_rate(emu: Emulator, client: genai.Client) -> None:
    """bad_vector_rate corrupts only a fraction of the vectors."""
    await emu.set_faults(bad_vector="zeros", bad_vector_rate=0.5, seed=5)
    lines = await _outputs(emu, client, [f"t{i}" for i in range(20)])
    zeros = [line for line in lines if line["response"]["embedding"]["values"] == [0.0] * 4]
    assert 0 < len(zeros) < 20


async def test_faults_put_replaces_the_whole_set(emu: Emulator) -> None:
    """PUT /_emulator/faults resets unnamed faults; GET shows it; unknown names are refused."""
    await emu.set_faults(error_rate=0.3, latency_ms=50)
    current = await emu.set_faults(rate_limit_rate=0.1)
    assert current == await emu.faults()
    assert current["error_rate"] == 0.0 and current["latency_ms"] == 0.0
    assert current["rate_limit_rate"] == 0.1
    assert current["job_pending_s"] == 0.5 and current["job_running_s"] == 1.0
    with pytest.raises(AdminError, match="400"):
        await emu.set_faults(error_rat=1)
    with pytest.raises(AdminError, match="400"):
        await emu.set_faults(error_rate=2)
    with pytest.raises(AdminError, match="400"):
        await emu.set_faults(job_outcome="exploded")
