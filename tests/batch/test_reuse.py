"""Reuse (CONTRACT §13) over the real servers: a text already embedded is copied from its
stored vector, never sent to Gemini again; the emulator counts the tokens it was sent."""

from __future__ import annotations

from typing import Any

import msgspec

from consumers.batch.inputs import Input
from events import subjects
from events.payloads import Completed, Item, SubmitRequest
from tests.harness import Stack, batch, stream_messages, submit, wait_finished, wait_for

N = 40


def _texts(n: int, tag: str = "src") -> list[str]:
    return [f"chunk {i} of {tag}: def f{i}(): return {i}" for i in range(n)]


def _req(batch_id: str, texts: list[str], prefix: str | None = None, **fields: Any,
         ) -> SubmitRequest:
    items = [Item(f"{prefix or batch_id}-{i}", t) for i, t in enumerate(texts)]
    return SubmitRequest(batch_id=batch_id, items=items, **fields)


def _tokens(texts: list[str]) -> int:
    """What the emulator counts for these texts in one call or job."""
    req = _req("x", texts)
    assert req.items is not None
    return Input(req, req.items).est_tokens()


async def _spent(stack: Stack) -> int:
    tokens = (await stack.emulator.state())["tokens"]
    return int(tokens["online"]) + int(tokens["batch"])


async def _completed(stack: Stack, batch_id: str) -> Completed:
    nc = await stack.nc()
    try:
        async def found() -> Completed | None:
            for data in await stream_messages(nc, subjects.COMPLETED):
                done = msgspec.json.decode(data, type=Completed)
                if done.batch_id == batch_id:
                    return done
            return None
        result: Completed = await wait_for(found, 60, what=f"batch.completed for {batch_id}")
        return result
    finally:
        await nc.close()


async def _vectors(db: Any, batch_id_prefix: str) -> dict[str, list[float]]:
    rows = await db.fetch("SELECT item_id, embedding::text AS v FROM batchyard.embeddings"
                          " WHERE item_id LIKE $1 || '-%'", batch_id_prefix)
    return {r["item_id"].split("-", 1)[1]: r["v"] for r in rows}


async def _row(db: Any, batch_id: str) -> Any:
    return await db.fetchrow("SELECT * FROM batchyard.batches WHERE batch_id = $1", batch_id)


async def test_same_texts_under_new_ids_cost_nothing_even_with_the_key_expired(
        stack: Stack) -> None:
    await stack.pod("submit", "poll")
    nc = await stack.nc()
    db = await stack.db()
    texts = _texts(N)
    await submit(nc, _req("first", texts))
    assert await wait_finished(stack, 1) == {"succeeded": 1}
    spent, jobs = await _spent(stack), len((await stack.emulator.state())["jobs"])
    assert spent == _tokens(texts) and jobs == 1
    await stack.emulator.set_key(stack.key, "expired")

    await submit(nc, _req("again", texts))
    assert await wait_finished(stack, 2) == {"succeeded": 2}
    done = await _completed(stack, "again")
    assert done.job_name is None and done.status == "succeeded"
    assert (done.items_reused, done.items_embedded, done.items_failed) == (N, N, 0)
    row = await _row(db, "again")
    assert row["items_reused"] == N and row["items_embedded"] == N and row["job_name"] is None
    state = await stack.emulator.state()
    assert await _spent(stack) == spent and len(state["jobs"]) == jobs
    assert await _vectors(db, "again") == await _vectors(db, "first")
    assert await db.fetchval("SELECT count(*) FROM batchyard.batches"
                             " WHERE status = 'auth_failed'") == 0
    await db.close()
    await nc.close()


async def test_only_changed_texts_are_paid_for_and_unchanged_rows_are_kept(
        stack: Stack) -> None:
    await stack.pod("submit", "poll")
    nc = await stack.nc()
    db = await stack.db()
    texts = _texts(400)
    await submit(nc, _req("repo", texts))
    assert await wait_finished(stack, 1) == {"succeeded": 1}
    before = await _spent(stack)
    kept = {r["item_id"]: r["created_at"] for r in await db.fetch(
        "SELECT item_id, created_at FROM batchyard.embeddings")}

    changed = list(texts)
    for i in range(0, 400, 20):  # 5% of the chunks edited
        changed[i] = f"edited {i}: def g{i}(): return -{i}"
    await submit(nc, _req("repo", changed, attempt=1))
    await wait_for(lambda: _row(db, "repo"), what="the row")

    async def again() -> Any:
        r = await _row(db, "repo")
        return r if r["attempt"] == 1 and r["status"] == "succeeded" else None

    row = await wait_for(again, 120, what="the re-index finished")
    new = [changed[i] for i in range(0, 400, 20)]
    assert await _spent(stack) - before == _tokens(new)
    assert row["items_reused"] == 380 and row["items_embedded"] == 400
    rows = {r["item_id"]: r for r in await db.fetch("SELECT * FROM batchyard.embeddings")}
    assert len(rows) == 400
    for i in range(400):
        r = rows[f"repo-{i}"]
        if i % 20:
            assert r["created_at"] == kept[f"repo-{i}"], "an unchanged item keeps its row"
        else:
            assert r["created_at"] > kept[f"repo-{i}"], "an edited item gets a new vector"
    state = await stack.emulator.state()
    assert sorted(j["request_count"] for j in state["jobs"]) == [20, 400]
    await db.close()
    await nc.close()


async def test_duplicate_texts_within_a_batch_are_sent_once(stack: Stack) -> None:
    await stack.pod("submit", "poll")
    nc = await stack.nc()
    db = await stack.db()
    distinct = _texts(20, "dup")
    texts = [distinct[i % 20] for i in range(60)]
    await submit(nc, _req("dups", texts))
    assert await wait_finished(stack, 1) == {"succeeded": 1}
    state = await stack.emulator.state()
    assert [j["request_count"] for j in state["jobs"]] == [20]
    assert await _spent(stack) == _tokens(distinct)
    vectors = await _vectors(db, "dups")
    assert len(vectors) == 60
    for i in range(60):
        assert vectors[str(i)] == vectors[str(i % 20)]
    row = await _row(db, "dups")
    assert (row["items_reused"], row["items_embedded"], row["items_failed"]) == (40, 60, 0)
    assert (await _completed(stack, "dups")).items_reused == 40
    await db.close()
    await nc.close()


async def test_no_reuse_across_dims_task_types_or_rows_without_a_hash(stack: Stack) -> None:
    await stack.pod("submit", "poll")
    nc = await stack.nc()
    db = await stack.db()
    texts = _texts(N)
    cost = _tokens(texts)
    await submit(nc, _req("d768", texts, output_dimensionality=768))
    assert await wait_finished(stack, 1) == {"succeeded": 1}
    await submit(nc, _req("d1536", texts, output_dimensionality=1536))
    assert await wait_finished(stack, 2) == {"succeeded": 2}
    await submit(nc, _req("query", texts, output_dimensionality=768,
                          task_type="RETRIEVAL_QUERY"))
    assert await wait_finished(stack, 3) == {"succeeded": 3}
    assert await _spent(stack) == 3 * cost
    for batch_id in ("d768", "d1536", "query"):
        assert (await _row(db, batch_id))["items_reused"] == 0
    dims = await db.fetch("SELECT DISTINCT dims FROM batchyard.embeddings"
                          " WHERE batch_id = 'd1536'")
    assert [r["dims"] for r in dims] == [1536]

    # Rows written before the hash existed are never reused.
    await db.execute("UPDATE batchyard.embeddings SET text_sha256 = NULL")
    await submit(nc, _req("old", texts, output_dimensionality=768))
    assert await wait_finished(stack, 4) == {"succeeded": 4}
    assert await _spent(stack) == 4 * cost
    assert (await _row(db, "old"))["items_reused"] == 0
    await db.close()
    await nc.close()


async def test_reuse_turned_off_pays_for_every_text(stack: Stack) -> None:
    await stack.pod("submit", "poll", BATCHYARD_REUSE_EMBEDDINGS="false")
    nc = await stack.nc()
    texts = _texts(N)
    await submit(nc, _req("a", texts))
    assert await wait_finished(stack, 1) == {"succeeded": 1}
    await submit(nc, _req("b", texts))
    assert await wait_finished(stack, 2) == {"succeeded": 2}
    assert await _spent(stack) == 2 * _tokens(texts)
    assert (await _completed(stack, "b")).items_reused == 0
    await nc.close()


async def test_resubmit_reuses_its_own_rows_unless_fresh(stack: Stack) -> None:
    await stack.pod("submit", "poll")
    nc = await stack.nc()
    db = await stack.db()
    await submit(nc, batch("redo", N))
    assert await wait_finished(stack, 1) == {"succeeded": 1}
    once = await _spent(stack)

    code, out = await stack.cli("batches", "resubmit", "redo")
    assert code == 0, out

    async def attempt(n: int) -> Any:
        r = await _row(db, "redo")
        return r if r["attempt"] == n and r["status"] == "succeeded" else None

    row = await wait_for(lambda: attempt(1), 60, what="the resubmit finished")
    assert row["items_reused"] == N and row["job_name"] is None
    assert await _spent(stack) == once

    code, out = await stack.cli("batches", "resubmit", "redo", "--fresh")
    assert code == 0, out
    row = await wait_for(lambda: attempt(2), 60, what="the fresh resubmit finished")
    assert row["items_reused"] == 0 and row["job_name"] is not None
    assert await _spent(stack) == 2 * once
    assert len((await stack.emulator.state())["jobs"]) == 2
    await db.close()
    await nc.close()


async def test_online_path_reuses_too(stack: Stack) -> None:
    await stack.pod("submit", "poll")
    nc = await stack.nc()
    db = await stack.db()
    texts = _texts(8, "small")
    await submit(nc, _req("s1", texts))
    assert await wait_finished(stack, 1) == {"succeeded": 1}
    spent = await _spent(stack)
    assert spent == _tokens(texts) and not (await stack.emulator.state())["jobs"]
    await submit(nc, _req("s2", [*texts[:6], "a new text", "another new one"]))
    assert await wait_finished(stack, 2) == {"succeeded": 2}
    assert await _spent(stack) - spent == _tokens(["a new text", "another new one"])
    assert (await _row(db, "s2"))["items_reused"] == 6
    await db.close()
    await nc.close()
