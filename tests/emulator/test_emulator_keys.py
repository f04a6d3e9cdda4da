"""API key states answer exactly as the real API does, and jobs outlive a bad key."""

from __future__ import annotations

import pytest
from conftest import KEY, ClientFactory
from emu_support import client_error, error_info_reason, file_job, read_lines
from google import genai
from google.genai import errors, types

from sandbox.emulator import Emulator
from sandbox.emulator.admin_client import AdminError

EXPIRED = "API key expired. Please renew the API key."
INVALID = "API key not valid. Please pass a valid API key."
LEAKED = "Your API key was reported as leaked. Please use another API key."
UNREGISTERED = (
    "Method doesn't allow unregistered callers (callers without established identity)."
    " Please use API Key or other form of API consumer identity to call this API."
)


@pytest.mark.parametrize(
    ("state", "code", "status", "message", "reason"),
    [
        ("expired", 400, "INVALID_ARGUMENT", EXPIRED, "API_KEY_INVALID"),
        ("invalid", 400, "INVALID_ARGUMENT", INVALID, "API_KEY_INVALID"),
        ("revoked", 403, "PERMISSION_DENIED", LEAKED, None),
    ],
)
async def test_key_states(
    emu: Emulator, client: genai.Client, state: str, code: int, status: str, message: str,
    reason: str | None,
) -> None:
    """Each bad key state raises ClientError with the real code, status, message and details."""
    await emu.set_key(KEY, state)
    for call in (
        client.aio.models.get(model="gemini-embedding-001"),
        client.aio.files.list(),
        client.aio.batches.list(),
    ):
        error = await client_error(call)
        assert type(error) is errors.ClientError
        assert (error.code, error.status, error.message) == (code, status, message)
        assert error_info_reason(error) == reason
        body = error.details["error"]
        if reason is None:
            assert "details" not in body
        else:
            localized = body["details"][1]
            assert localized == {"@type": "type.googleapis.com/google.rpc.LocalizedMessage",
                                 "locale": "en-US", "message": message}
    await emu.set_key(KEY, "valid")
    assert (await client.aio.models.get(model="gemini-embedding-001")).name


async def test_unknown_key_is_invalid(make_client: ClientFactory) -> None:
    """A key the emulator never saw gets the invalid-key 400."""
    error = await client_error(make_client("never-seen").aio.models.get(model="gemini-embedding-001"))
    assert (error.code, error.message, error_info_reason(error)) == (
        400, INVALID, "API_KEY_INVALID"
    )


async def test_missing_key(emu: Emulator, make_client: ClientFactory) -> None:
    """A call with an empty key header gets the 403 'unregistered callers' body, no details."""
    client = make_client(headers={"x-goog-api-key": ""})
    error = await client_error(client.aio.models.get(model="gemini-embedding-001"))
    assert (error.code, error.status, error.message) == (403, "PERMISSION_DENIED", UNREGISTERED)
    assert "details" not in error.details["error"]
    assert (await emu.state())["calls"][""] == {"models.get": 1}


async def test_bad_upload_start_raises_before_bytes(emu: Emulator, client: genai.Client) -> None:
    """An expired key fails the upload start with the key error; no file or session appears."""
    await emu.set_key(KEY, "expired")
    error = await client_error(file_job(client, ["x"]))
    assert error.message == EXPIRED
    state = await emu.state()
    assert state["files"] == []
    assert state["calls"][KEY] == {"files.upload": 1}


async def test_job_outlives_a_bad_key(emu: Emulator, make_client: ClientFactory) -> None:
    """A job keeps running after its key expires; a new valid key reads its result."""
    old = make_client()
    job = await file_job(old, ["survives"], dims=8)
    await emu.set_key(KEY, "expired")
    await emu.advance(2)
    assert (await emu.state())["jobs"][0]["state"] == "BATCH_STATE_SUCCEEDED"
    error = await client_error(old.aio.batches.get(name=job.name))
    assert error.message == EXPIRED

    await emu.set_key("rotated-key", "valid")
    new = make_client("rotated-key")
    done = await new.aio.batches.get(name=job.name)
    assert done.state == types.JobState.JOB_STATE_SUCCEEDED
    assert done.dest is not None and done.dest.file_name is not None
    (line,) = read_lines(await new.aio.files.download(file=done.dest.file_name))
    assert line["key"] == "r0"


async def test_calls_counted_per_key_including_rejected(
    emu: Emulator, make_client: ClientFactory
) -> None:
    """GET /_emulator/state counts every call by key and endpoint, rejected ones too."""
    good, bad = make_client(), make_client("nope")
    await good.aio.models.get(model="gemini-embedding-001")
    await good.aio.models.list()
    await client_error(bad.aio.models.get(model="gemini-embedding-001"))
    await client_error(bad.aio.batches.get(name="batches/x"))
    state = await emu.state()
    assert state["calls"][KEY] == {"models.get": 1, "models.list": 1}
    assert state["calls"]["nope"] == {"models.get": 1, "batches.get": 1}
    assert state["keys"] == {KEY: "valid"}


async def test_admin_rejects_unknown_key_state(emu: Emulator) -> None:
    """PUT /_emulator/keys with a state outside the four answers 400."""
    with pytest.raises(AdminError, match="400"):
        await emu.set_key(KEY, "sleepy")
