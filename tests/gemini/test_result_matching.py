"""Results are matched to their items by key: the API reorders inlined responses."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np

from consumers.batch.inputs import Input
from consumers.batch.results import ingest_inline
from consumers.gemini.jobs import InlineResult
from events.payloads import DEFAULT_MODEL, Item, SubmitRequest
from sandbox.emulator import embed
from tests.harness import Stack, batch, submit, wait_finished


async def test_an_inline_job_past_the_shuffle_puts_each_vector_on_its_item(stack: Stack) -> None:
    """1,500 inlined requests (the emulator shuffles past 600, as the API does past about
    a thousand): every stored vector is the emulator's vector of that item's text."""
    await stack.pod("submit", "poll", BATCHYARD_INLINE_MAX_ITEMS="2000")
    nc = await stack.nc()
    req = batch("many", 1500, output_dimensionality=16)
    await submit(nc, req)
    assert await wait_finished(stack, 1, timeout=120) == {"succeeded": 1}
    job = next(j for j in (await stack.emulator.state())["jobs"] if j["display_name"] == "many:0")
    assert job["request_count"] == 1500 and not job["input_file"]  # inline
    db = await stack.db()
    rows = await db.fetch("SELECT item_id, embedding FROM batchyard.embeddings")
    await db.close()
    texts = {i.id: i.text for i in req.items or []}
    assert len(rows) == 1500
    for r in rows:
        want = np.asarray(embed.vector(DEFAULT_MODEL, texts[r["item_id"]], 16))
        got = np.asarray(r["embedding"], dtype=np.float64)
        assert got @ want / np.linalg.norm(want) > 1 - 1e-6, r["item_id"]
    await nc.close()


class _Store:
    def __init__(self) -> None:
        self.rows: dict[str, np.ndarray] = {}

    async def write_embeddings(self, model: str, batch_id: str,
                               rows: list[tuple[str, np.ndarray]], normalize: bool,
                               **columns: object) -> None:
        self.rows.update(rows)

    async def delete_embeddings(self, model: str, batch_id: str, ids: list[str]) -> None:
        for i in ids:
            self.rows.pop(i, None)  # as DELETE: a row not written is no error


def _app(cap: int = 500) -> Any:
    return SimpleNamespace(store=_Store(), settings=SimpleNamespace(normalize=True,
                                                                   inline_max_items=cap))


def _input(n: int) -> Input:
    items = [Item(f"i{k}", f"text {k}") for k in range(n)]
    return Input(SubmitRequest(batch_id="b", items=items, output_dimensionality=2), items)


def _result(v: float, key: str | None) -> InlineResult:
    return InlineResult(np.asarray([v, 1.0], dtype=np.float32), None, key=key)


async def test_keyed_responses_land_on_their_items_in_any_order() -> None:
    app = _app()
    got = await ingest_inline(app, _input(3), [_result(2, "i2"), _result(0, "i0"),
                                               _result(1, "i1")])
    assert got.embedded == 3 and not got.failures
    assert {k: float(v[0]) for k, v in app.store.rows.items()} == {"i0": 0, "i1": 1, "i2": 2}


async def test_keyless_responses_are_taken_in_order_only_when_they_can_be() -> None:
    app = _app(cap=3)
    got = await ingest_inline(app, _input(3), [_result(k, None) for k in range(3)])
    assert got.embedded == 3 and float(app.store.rows["i2"][0]) == 2
    for cap, answers in ((2, 3), (500, 2)):  # over the cap; a count that is not the items'
        app = _app(cap=cap)
        got = await ingest_inline(app, _input(3), [_result(k, None) for k in range(answers)])
        assert got.embedded == 0 and not app.store.rows
        assert {e.status for e in got.failures.values()} == {"RESULT_MISSING"}
        assert set(got.failures) == {"i0", "i1", "i2"}


async def test_missing_unknown_and_duplicated_keys_fail_only_their_items() -> None:
    app = _app()
    answers = [_result(0, "i0"), _result(9, "nobody"), _result(2, "i2"), _result(3, "i2"),
               _result(4, ""), _result(5, None)]
    got = await ingest_inline(app, _input(4), answers)
    assert set(app.store.rows) == {"i0"} and got.embedded == 1
    assert set(got.failures) == {"i1", "i2", "i3"}
    assert {e.status for e in got.failures.values()} == {"RESULT_MISSING"}
    assert got.unexpected == 3


async def test_a_duplicate_already_written_is_taken_back() -> None:
    """The first of two results for an item was flushed before the second came."""
    app = _app()
    n = 300  # past one flush of rows
    answers = [_result(k, f"i{k}") for k in range(n)] + [_result(7, "i0")]
    got = await ingest_inline(app, _input(n), answers)
    assert "i0" not in app.store.rows and len(app.store.rows) == n - 1
    assert got.embedded == n - 1 and got.failures["i0"].status == "RESULT_MISSING"
