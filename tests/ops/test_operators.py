"""Operator surface against a running stack: CLI numbers, probes, metrics, the demo."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from typing import Any

import aiohttp

from events import subjects
from sandbox._proc import free_port
from sandbox.pg import PostgresServer
from tests.conftest import KEY
from tests.harness import Stack, batch, statuses, submit, wait_finished, wait_for


async def _cli(stack: Stack, *args: str) -> tuple[int, str]:
    return await stack.cli(*args)


async def _json(stack: Stack, *args: str) -> Any:
    code, out = await _cli(stack, *args, "--json")
    assert code == 0, out
    return json.loads(out)


async def test_status_batches_and_dead_commands_match_the_servers(stack: Stack) -> None:
    """status, batches and dead report what the database and the streams hold."""
    await stack.emulator.set_faults(item_error_rate=1.0)
    await stack.pod("submit", "poll", BATCHYARD_MAX_ITEM_ATTEMPTS="1")
    nc = await stack.nc()
    for n in range(3):
        await submit(nc, batch(f"ok{n}", 4))  # online: item faults do not apply
    await submit(nc, batch("doomed", 20))
    await nc.jetstream().publish(subjects.SUBMIT, b"garbage")
    assert await wait_finished(stack, 4) == {"succeeded": 3, "failed": 1}
    status = await _json(stack, "status")
    db = await stack.db()
    assert status["batches"] == await statuses(db)
    assert status["dead"] == 2 and status["parked"] == 0
    submit_lag = next(c for c in status["consumers"] if c["consumer"] == "submit")
    assert submit_lag["pending"] == 0 and submit_lag["ack_pending"] == 0
    listed = await _json(stack, "batches", "list")
    assert sorted(b["batch_id"] for b in listed) == ["doomed", "ok0", "ok1", "ok2"]
    shown = await _json(stack, "batches", "show", "doomed")
    assert shown["status"] == "failed" and shown["items_failed"] == 20
    dead = await _json(stack, "dead", "list")
    assert sorted(d["reason"] for d in dead) == ["invalid_message", "job_failed"] or \
        sorted(d["reason"] for d in dead) == ["invalid_message", "item_attempts_exhausted"]
    code, report = await _cli(stack, "report", "--markdown")
    assert code == 0 and "| invalid_message | submit | 1 |" in report, report
    assert "| succeeded | 3 | 12 | 12 | 0 |" in report and "| failed | 1 | 20 | 0 | 20 |" in report
    assert "## Slowest batches" in report and "| doomed | failed | 20 | 1 |" in report
    letter = next(d for d in dead if d["batch_id"] == "doomed")
    assert letter["items"] == 20
    await stack.emulator.set_faults()
    code, out = await _cli(stack, "dead", "replay", str(letter["seq"]))
    assert code == 0 and "replayed: batch doomed as attempt 1" in out, out
    code, out = await _cli(stack, "dead", "replay", str(letter["seq"]))
    assert "already replayed" in out, out
    await wait_for(lambda: db.fetchval(
        "SELECT status = 'succeeded' FROM batchyard.batches WHERE batch_id = 'doomed'"), 60)
    bad = next(d for d in dead if d["reason"] == "invalid_message")
    code, out = await _cli(stack, "dead", "replay", str(bad["seq"]))
    assert "holds no batch.submit" in out
    await db.close()
    await nc.close()


async def test_parked_list_shows_what_is_parked(stack: Stack) -> None:
    """`parked list` shows each parked message with stage, fingerprint and error."""
    await stack.emulator.set_key(KEY, "expired")
    await stack.pod("submit", "poll")
    nc = await stack.nc()
    for n in range(3):
        await submit(nc, batch(f"pk{n}", 15))
    db = await stack.db()
    await wait_for(lambda: db.fetchval(
        "SELECT count(*) = 3 FROM batchyard.batches WHERE status = 'auth_failed'"), 60)
    parked = await _json(stack, "parked", "list")
    assert sorted(p["batch_id"] for p in parked) == ["pk0", "pk1", "pk2"]
    assert all(p["stage"] == "submit" and "API key expired" in p["error"] for p in parked), [p["error"] for p in parked]
    assert all(re.fullmatch(r"[0-9a-f]{12}", p["key_fingerprint"]) for p in parked)
    status = await _json(stack, "status")
    assert status["parked"] == 3 and status["key"]["state"] == "invalid"
    await db.close()
    await nc.close()


async def _get(port: int, path: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}{path}") as r:
        return r.status, await r.text()


def _metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def test_probes_and_metrics(stack: Stack, pg: PostgresServer) -> None:
    """/healthz is alive, /metrics moves as work flows, /readyz fails without PostgreSQL."""
    port = free_port()
    await stack.pod("submit", "poll", BATCHYARD_HTTP_PORT=str(port))

    async def ready() -> bool:
        try:
            return (await _get(port, "/readyz"))[0] == 200
        except aiohttp.ClientError:
            return False

    await wait_for(ready, 30, what="/readyz")
    assert (await _get(port, "/healthz"))[0] == 200
    nc = await stack.nc()
    for n in range(5):
        await submit(nc, batch(f"m{n}", 20))
    await wait_finished(stack, 5)
    _, text = await _get(port, "/metrics")
    assert _metric(text, "batchyard_messages_total", role="submit", outcome="ack") >= 5
    assert _metric(text, "batchyard_gemini_calls_total", endpoint="batches.create",
                   outcome="ok") == 5
    assert _metric(text, "batchyard_batch_seconds_count") == 5
    await pg.stop()
    try:
        status, body = await _get(port, "/readyz")
        assert status == 503 and json.loads(body)["postgres"] is False
    finally:
        await pg.start()
    await wait_for(ready, 30, what="/readyz after PostgreSQL is back")
    await nc.close()


async def test_logs_never_show_the_key(stack: Stack) -> None:
    """A whole run's logs, an auth failure included, never contain the key."""
    await stack.pod("submit", "poll", "key-health", BATCHYARD_LOG_LEVEL="debug")
    nc = await stack.nc()
    await submit(nc, batch("quiet", 20))
    await wait_finished(stack, 1)
    await stack.emulator.set_key(KEY, "revoked")
    await submit(nc, batch("loud", 20))
    db = await stack.db()
    await wait_for(lambda: db.fetchval(
        "SELECT status = 'auth_failed' FROM batchyard.batches WHERE batch_id = 'loud'"), 60)
    await stack.stop_all()
    logs = stack.logs()
    assert "message.parked" in logs and KEY not in logs
    await db.close()
    await nc.close()


async def test_demo_exits_zero_and_its_summary_agrees() -> None:
    """`batchyard demo` finishes every batch through an expiry and a rotation."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "consumers", "demo", env={**os.environ, "COLUMNS": "120"},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 240)
    text = out.decode()
    assert proc.returncode == 0, text[-3000:]
    numbers = {m[1].strip(): int(m[2]) for m in re.finditer(r"│ ([a-z ]+?)\s+│\s+(\d+) │", text)}
    assert numbers["batches succeeded"] == 300
    assert numbers["embeddings stored"] == numbers["items submitted"] > 0
    assert numbers["batches parked on the expired key"] > 0 and numbers["still parked"] == 0
