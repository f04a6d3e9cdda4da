"""Inlined requests' metadata is echoed on their responses; large inline jobs answer shuffled."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from conftest import KEY

from sandbox.emulator import Emulator, embed
from sandbox.emulator.admin_client import AdminError

MODEL = "gemini-embedding-001"


@pytest.fixture
async def session(emu: Emulator) -> AsyncIterator[aiohttp.ClientSession]:
    """A plain client with KEY: the SDK cannot set an inlined request's metadata."""
    async with aiohttp.ClientSession(headers={"x-goog-api-key": KEY}) as http:
        yield http


async def _inline(emu: Emulator, http: aiohttp.ClientSession, requests: list[Any],
                  ) -> tuple[int, Any]:
    """Create an inline job of `requests`, let it finish; (status, inlined responses)."""
    body = {"batch": {"inputConfig": {"requests": {"requests": requests}}}}
    async with http.post(f"{emu.url}/v1beta/models/{MODEL}:asyncBatchEmbedContent",
                         json=body) as response:
        created = await response.json()
        if response.status != 200:
            return response.status, created
    await emu.advance(2)
    async with http.get(f"{emu.url}/v1beta/{created['name']}") as response:
        done = await response.json()
    return 200, done["metadata"]["output"]["inlinedResponses"]["inlinedResponses"]


def _requests(n: int, *, keyed: bool = True) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i in range(n):
        entry: dict[str, Any] = {"request": {"content": {"parts": [{"text": f"t{i}"}]},
                                             "outputDimensionality": 4}}
        if keyed:
            entry["metadata"] = {"key": f"k{i}", "n": i}
        out.append(entry)
    return out


def _vector_of(response: dict[str, Any]) -> list[float]:
    values: list[float] = response["response"]["embedding"]["values"]
    return values


async def test_metadata_is_echoed_in_order_below_the_threshold(
    emu: Emulator, session: aiohttp.ClientSession,
) -> None:
    """Each response carries its request's metadata as sent; 600 requests stay in order."""
    status, responses = await _inline(emu, session, _requests(600))
    assert status == 200
    assert [r["metadata"] for r in responses] == [{"key": f"k{i}", "n": i} for i in range(600)]
    assert _vector_of(responses[7]) == embed.vector(MODEL, "t7", 4)


async def test_unkeyed_requests_get_no_metadata(
    emu: Emulator, session: aiohttp.ClientSession,
) -> None:
    """No metadata sent, none echoed (and an error response carries it too when sent)."""
    await emu.set_faults(item_error_rate=1.0)
    _, plain = await _inline(emu, session, _requests(2, keyed=False))
    assert all("metadata" not in r and "error" in r for r in plain)
    _, keyed = await _inline(emu, session, _requests(2))
    assert [r["metadata"]["key"] for r in keyed] == ["k0", "k1"]
    assert all(set(r["error"]) == {"code", "message"} for r in keyed)


async def test_responses_past_the_threshold_come_shuffled(
    emu: Emulator, session: aiohttp.ClientSession,
) -> None:
    """Past shuffle_inline_over (600 by default) the order is lost; metadata still matches
    each response to its request, and the same seed gives the same order."""
    orders = []
    for _ in range(2):
        await emu.set_faults(seed=11)
        _, responses = await _inline(emu, session, _requests(601))
        keys = [r["metadata"]["key"] for r in responses]
        assert keys != [f"k{i}" for i in range(601)]
        assert sorted(keys) == sorted(f"k{i}" for i in range(601))
        for r in responses[:20]:
            assert _vector_of(r) == embed.vector(MODEL, f"t{r['metadata']['n']}", 4)
        orders.append(keys)
    assert orders[0] == orders[1]


@pytest.mark.parametrize("off", [0, None])
async def test_shuffle_can_be_turned_off(
    emu: Emulator, session: aiohttp.ClientSession, off: int | None,
) -> None:
    """shuffle_inline_over 0 or null keeps every order; a low threshold shuffles small jobs."""
    assert (await emu.set_faults(shuffle_inline_over=off))["shuffle_inline_over"] == off
    _, responses = await _inline(emu, session, _requests(700))
    assert [r["metadata"]["key"] for r in responses] == [f"k{i}" for i in range(700)]
    await emu.set_faults(shuffle_inline_over=3, seed=1)
    _, small = await _inline(emu, session, _requests(12))
    assert [r["metadata"]["key"] for r in small] != [f"k{i}" for i in range(12)]


async def test_faults_refuse_a_negative_threshold_and_bad_metadata(
    emu: Emulator, session: aiohttp.ClientSession,
) -> None:
    """shuffle_inline_over < 0 is a 400 of the admin API; metadata that is no object a 400."""
    assert (await emu.faults())["shuffle_inline_over"] == 600
    with pytest.raises(AdminError, match="400"):
        await emu.set_faults(shuffle_inline_over=-1)
    requests = _requests(1)
    requests[0]["metadata"] = "k0"
    status, body = await _inline(emu, session, requests)
    assert status == 400 and body["error"]["status"] == "INVALID_ARGUMENT"


async def test_batch_stats_rise_while_the_job_runs(
    emu: Emulator, session: aiohttp.ClientSession,
) -> None:
    """successfulRequestCount climbs through RUNNING and pendingRequestCount falls."""
    await emu.set_faults(job_pending_s=1, job_running_s=10)
    body = {"batch": {"inputConfig": {"requests": {"requests": _requests(100)}}}}
    async with session.post(f"{emu.url}/v1beta/models/{MODEL}:asyncBatchEmbedContent",
                            json=body) as response:
        name = (await response.json())["name"]
    seen: list[tuple[str, int, int]] = []
    for _ in range(4):
        await emu.advance(3)
        async with session.get(f"{emu.url}/v1beta/{name}") as response:
            meta = (await response.json())["metadata"]
        stats = meta["batchStats"]
        seen.append((meta["state"], int(stats.get("successfulRequestCount", 0)),
                     int(stats.get("pendingRequestCount", 0))))
    running = [s for s in seen if s[0] == "BATCH_STATE_RUNNING"]
    assert len(running) >= 2
    assert [d for _, d, _ in running] == sorted(d for _, d, _ in running)
    assert running[0][1] < running[-1][1] and all(d + p == 100 for _, d, p in running)
    assert seen[-1] == ("BATCH_STATE_SUCCEEDED", 100, 0)
