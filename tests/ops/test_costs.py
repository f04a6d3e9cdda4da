"""What it costs: tokens per batch in `batches show`, totals and estimated spend in `status`,
`report --markdown` and the metrics, at the list prices of consumers/costs.py."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest

from consumers.costs import PRICES, priced
from events.payloads import SubmitRequest
from sandbox._proc import free_port
from tests.harness import Stack, batch, submit, wait_finished

ONLINE_ITEMS = 5  # at most BATCHYARD_ONLINE_THRESHOLD (10): the online path
BATCH_ITEMS = 40


def _tokens(req: SubmitRequest) -> int:
    return -(-sum(len(i.text.encode()) for i in req.items or []) // 4)


async def _json(stack: Stack, *args: str) -> Any:
    code, out = await stack.cli(*args, "--json")
    assert code == 0, out
    return json.loads(out)


async def _samples(port: int) -> dict[str, float]:
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/metrics") as r:
        text = await r.text()
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines() if line and not line.startswith("#")}


async def test_tokens_and_spend_are_shown_and_counted(stack: Stack) -> None:
    """Each batch's tokens by path, the totals, and the spend at the list prices agree
    in `batches show`, `status`, the report and the pod's counters."""
    port = free_port()
    await stack.pod("submit", "poll", BATCHYARD_HTTP_PORT=str(port))
    nc = await stack.nc()
    small, large = batch("small", ONLINE_ITEMS), batch("large", BATCH_ITEMS)
    for req in (small, large):
        await submit(nc, req)
    assert await wait_finished(stack, 2) == {"succeeded": 2}
    await nc.close()

    shown = await _json(stack, "batches", "show", "small")
    assert (shown["tokens_batch"], shown["tokens_online"]) == (0, _tokens(small))
    assert shown["spend_usd"] == pytest.approx(_tokens(small) * 0.15 / 1e6)
    assert shown["saved_usd"] == 0
    shown = await _json(stack, "batches", "show", "large")
    assert (shown["tokens_batch"], shown["tokens_online"]) == (_tokens(large), 0)
    assert shown["spend_usd"] == pytest.approx(_tokens(large) * 0.075 / 1e6)
    assert shown["online_usd"] == pytest.approx(2 * shown["spend_usd"])

    cost = (await _json(stack, "status"))["cost"]
    assert (cost["tokens_batch"], cost["tokens_online"]) == (_tokens(large), _tokens(small))
    spend = (_tokens(large) * 0.075 + _tokens(small) * 0.15) / 1e6
    all_online = (_tokens(large) + _tokens(small)) * 0.15 / 1e6
    assert cost["spend_usd"] == pytest.approx(spend)
    assert cost["saved_usd"] == pytest.approx(all_online - spend)
    assert cost["unpriced_models"] == [] and "list prices" in cost["note"]

    code, text = await stack.cli("status")
    assert code == 0 and f"estimated spend ${spend:.4f}" in text, text
    code, report = await stack.cli("report", "--markdown")
    assert code == 0 and "## What it cost" in report
    assert f"| gemini-embedding-001 | {_tokens(large)} | {_tokens(small)} | ${spend:.4f} |" \
        in report

    samples = await _samples(port)
    assert samples['batchyard_tokens_submitted_total{path="batch"}'] == _tokens(large)
    assert samples['batchyard_tokens_submitted_total{path="online"}'] == _tokens(small)
    assert samples['batchyard_spend_dollars_total{path="batch"}'] == pytest.approx(
        _tokens(large) * 0.075 / 1e6)
    assert samples["batchyard_online_equivalent_dollars_total"] == pytest.approx(all_online)


def test_prices_are_in_one_place() -> None:
    """The Batch API costs half the online price; an unpriced model estimates nothing."""
    price = PRICES["gemini-embedding-001"]
    assert (price.batch, price.online) == (0.075, 0.15)
    assert priced("gemini-embedding-2", 1000, 10)["spend_usd"] is None
    assert priced("gemini-embedding-001", 2_000_000, 0)["saved_usd"] == pytest.approx(0.15)
