"""Least privilege on NATS: every role works with only its own user's permissions, and
what a role may not do the server refuses."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import nats.errors
import pytest
from nats.js.errors import APIError

from events import jetstream as defs
from events import subjects
from events.payloads import Item, KeyValid, encode
from events.permissions import render
from tests.conftest import KEY
from tests.harness import batch, statuses, submit, wait_finished, wait_for
from tests.secure import AuthStack, auth_stack

NEW_KEY = "AIzaSyBatchyardTestKeyRotated0000000002"
VIOLATION = "Permissions Violation"


@pytest.fixture
async def secured(migrated_url: str, emulator: Any, tmp_path: Path) -> AsyncIterator[AuthStack]:
    async with auth_stack(migrated_url, emulator, KEY, tmp_path) as s:
        yield s


async def _parked(stack: AuthStack) -> int:
    nc = await stack.nc()
    try:
        return (await nc.jetstream().stream_info(defs.BATCH_PARKED)).state.messages
    finally:
        await nc.close()


async def _rotate(stack: AuthStack, key: str) -> None:
    stack.key_file.write_text(key + "\n")
    code, out = await stack.as_user("operator", "status")  # the operator's CLI works too
    assert code == 0, out
    nc = await stack.nc()
    await nc.jetstream().publish(subjects.KEY_ROTATED, b"")
    await nc.close()


def _violations(stack: AuthStack) -> str:
    server = stack.natsd.log_path.read_text(errors="replace")
    return "\n".join(line for line in (server + stack.logs()).splitlines()
                     if VIOLATION in line or "nats.refused" in line)


async def test_every_role_works_with_only_its_own_user(secured: AuthStack) -> None:
    """Submit, poll, key-health and recovery pods, each logged in as its role, and a
    producer: batches inline and through BATCH_INPUTS park on an expired key (at submit
    and at poll), the rotated key replays them, all succeed, and the server refused
    nothing any of them asked for."""
    stack = secured
    await stack.emulator.set_key(KEY, "expired")
    await stack.emulator.set_key(NEW_KEY, "valid")
    secret = stack.tmp / "poll.password"  # as Kubernetes mounts a Secret
    secret.write_text(stack.passwords["poll"] + "\n")
    await stack.pod("poll", NATS_USER="poll", NATS_PASSWORD_FILE=str(secret))
    for role in ("submit", "key-health", "recovery"):
        await stack.pod(role, **stack.login(role))
    await stack.started()
    producer = await stack.connect("producer")
    for n in range(6):
        await submit(producer, batch(f"a{n}", 30 + n))
    path = stack.tmp / "big.jsonl"
    with path.open("wb") as f:
        for i in range(300):
            f.write(msgspec.json.encode(Item(f"big-{i}", f"{i} " + "y" * 4000)) + b"\n")
    code, out = await stack.as_user("producer", "publish", str(path), "--batch-id", "big")
    assert code == 0 and "object input/big.jsonl" in out, out
    await wait_for(lambda: _at_least(stack, 7), 60, what="7 parked")
    await _rotate(stack, NEW_KEY)
    assert await wait_finished(stack, 7, timeout=120) == {"succeeded": 7}
    # the key now expires while jobs run: polls park, and replay resumes them
    await stack.emulator.set_faults(job_pending_s=1, job_running_s=600)
    for n in range(4):
        await submit(producer, batch(f"b{n}", 40))
    db = await stack.db()
    await wait_for(lambda: db.fetchval(
        "SELECT count(*) = 4 FROM batchyard.batches WHERE status = 'submitted'"), 60)
    await stack.emulator.set_key(NEW_KEY, "expired")
    await stack.emulator.set_key(KEY, "valid")
    await wait_for(lambda: _at_least(stack, 4), 60, what="4 parked polls")
    await _rotate(stack, KEY)
    await wait_for(lambda: db.fetchval(
        "SELECT count(*) = 4 FROM batchyard.batches WHERE status = 'submitted' "
        "AND batch_id LIKE 'b%'"), 60, what="4 polls replayed")
    await stack.emulator.advance(600)
    assert await wait_finished(stack, 11, timeout=120) == {"succeeded": 11}
    assert await statuses(db) == {"succeeded": 11}
    await db.close()
    await producer.close()
    nc = await stack.nc()
    replay = await nc.jetstream().consumer_info(defs.BATCH_PARKED, defs.REPLAY.name)
    await nc.close()
    assert replay.num_pending == 0 and replay.num_ack_pending == 0  # all replayed
    assert _violations(stack) == ""
    for pod in stack.pods:
        assert await pod.terminate() == 0


async def _at_least(stack: AuthStack, n: int) -> bool:
    return await _parked(stack) >= n


async def test_run_all_works_as_the_all_user(secured: AuthStack) -> None:
    """`batchyard run all` as user `all` (the union of the roles) embeds, parks and
    replays with nothing refused."""
    stack = secured
    await stack.emulator.set_key(KEY, "expired")
    await stack.emulator.set_key(NEW_KEY, "valid")
    await stack.pod("all", **stack.login("all"))
    producer = await stack.connect("producer")
    for n in range(5):
        await submit(producer, batch(f"c{n}", 12 + n))
    await producer.close()
    await wait_for(lambda: _at_least(stack, 5), 60, what="5 parked")
    await _rotate(stack, NEW_KEY)
    assert await wait_finished(stack, 5, timeout=90) == {"succeeded": 5}
    assert _violations(stack) == ""


async def _refused(coro: Any) -> str:
    """The error a denied request ends in: the server answers nothing, so it times out."""
    try:
        await coro
    except (nats.errors.TimeoutError, nats.errors.NoRespondersError, APIError) as exc:
        return repr(exc)
    raise AssertionError("the server allowed it")


async def test_a_producer_may_only_submit(secured: AuthStack) -> None:
    """A producer's key.valid, BATCH_PARKED delete and purge, and read of batch.completed
    are refused by the server (each logged as a permissions violation)."""
    stack = secured
    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc))

    producer = await stack.connect("producer", error_cb=on_error)
    js = producer.jetstream(timeout=2)
    ok = await js.publish(subjects.SUBMIT, encode(batch("fine", 12)))
    assert ok.stream == defs.BATCH
    op = await stack.nc()
    parker = await stack.connect("submit")
    await parker.jetstream().publish(subjects.AUTH_FAILED, b"{}")
    await parker.close()
    forged = KeyValid(fingerprint="000000000000", model="m", checked_at=datetime.now(UTC))
    await _refused(js.publish(subjects.KEY_VALID, encode(forged)))
    await _refused(js.delete_msg(defs.BATCH_PARKED, 1))
    await _refused(js.purge_stream(defs.BATCH_PARKED))
    sub = await producer.subscribe(subjects.COMPLETED)
    poller = await stack.connect("poll")
    await poller.jetstream().publish(subjects.COMPLETED, b"{}")
    await poller.close()
    with pytest.raises(nats.errors.TimeoutError):  # the server never delivers to it
        await sub.next_msg(timeout=1)
    await _refused(js.subscribe(subjects.COMPLETED, ordered_consumer=True))
    await asyncio.sleep(0.3)
    opjs = op.jetstream()
    assert (await opjs.stream_info(defs.BATCH_PARKED)).state.messages == 1
    key_info = await opjs.stream_info(defs.KEY, subjects_filter=subjects.KEY_VALID)
    assert not (key_info.state.subjects or {})
    await producer.close()
    await op.close()
    # nats-py lowercases the server's -ERR text
    for refused in (f'publish to "{subjects.KEY_VALID}"',
                    f'publish to "$JS.API.STREAM.MSG.DELETE.{defs.BATCH_PARKED}"',
                    f'publish to "$JS.API.STREAM.PURGE.{defs.BATCH_PARKED}"',
                    f'subscription to "{subjects.COMPLETED}"'):
        assert any(refused.lower() in e for e in errors), (refused, errors)


async def test_a_wrong_password_is_one_line_at_start(secured: AuthStack) -> None:
    """A pod with a wrong password exits non-zero at once with one clear line: no stack
    trace, no retry loop."""
    stack = secured
    pod = await stack.pod("submit", NATS_USER="submit", NATS_PASSWORD="not-the-password")
    assert await asyncio.wait_for(pod.proc.wait(), 30) == 3
    text = pod.text().strip()
    assert "Traceback" not in text
    assert text.splitlines()[-1] == ("batchyard: NATS refused the connection as submit: "
                                     "'Authorization Violation' (check NATS_USER and "
                                     "NATS_PASSWORD / NATS_PASSWORD_FILE)")
    assert "not-the-password" not in text


def test_committed_auth_conf_equals_code() -> None:
    """deploy/nats/cluster/auth.conf is exactly what events/permissions.py renders, and
    secure.conf includes it."""
    root = Path(__file__).resolve().parents[2] / "deploy" / "nats" / "cluster"
    assert (root / "auth.conf").read_text() == render()
    assert "include ./auth.conf" in (root / "secure.conf").read_text()
