"""The auth path over real processes: park on a bad key, detect a good one, replay once."""

from __future__ import annotations

import asyncio

from events import jetstream as defs
from events import subjects
from events.payloads import KeyInvalid, KeyValid, decode
from tests.conftest import KEY
from tests.harness import Stack, batch, statuses, stream_messages, submit, wait_finished, wait_for
from tests.keys import BAD_KEY, NEW_KEY, everything, n_parked, parked, rotate

BATCH_CALLS = ("batches.create", "files.upload", "batches.get", "files.download")






def _calls(state: dict, key: str) -> int:
    return sum(n for ep, n in state["calls"].get(key, {}).items() if ep in BATCH_CALLS)




async def test_expired_key_parks_then_rotation_replays_everything(stack: Stack) -> None:
    """Expired key: batches park, none fail; a rotated key replays and embeds them all."""
    await stack.emulator.set_key(KEY, "expired")
    await stack.emulator.set_key(NEW_KEY, "valid")
    await everything(stack)
    nc = await stack.nc()
    for n in range(20):
        await submit(nc, batch(f"k{n}", 30 + n))
    await wait_for(lambda: n_parked(stack, 20), 60, what="20 parked")
    db = await stack.db()
    assert await statuses(db) == {"auth_failed": 20}
    tripped = _calls(await stack.emulator.state(), KEY)
    for n in range(20, 30):  # later batches make no call with the known-bad key
        await submit(nc, batch(f"k{n}", 12))
    await wait_for(lambda: n_parked(stack, 30), 60, what="30 parked")
    assert _calls(await stack.emulator.state(), KEY) == tripped
    await rotate(stack, NEW_KEY)
    assert await wait_finished(stack, 30, timeout=120) == {"succeeded": 30}
    assert await parked(stack) == 0
    names = [j["display_name"] for j in (await stack.emulator.state())["jobs"]]
    assert len(names) == len(set(names)) == 30
    valid = [decode(m, KeyValid) for m in await stream_messages(nc, subjects.KEY_VALID)]
    assert len(valid) == 1
    assert await db.fetchval("SELECT count(*) FROM batchyard.batches WHERE status = 'failed'") == 0
    await db.close()
    await nc.close()
    assert KEY not in stack.logs() and NEW_KEY not in stack.logs()




async def test_expiry_while_polling_resumes_the_same_jobs(stack: Stack) -> None:
    """The key expires while jobs run: polls park, and after rotation the same jobs finish."""
    await stack.emulator.set_faults(job_pending_s=1, job_running_s=600)
    await stack.emulator.set_key(NEW_KEY, "valid")
    await everything(stack)
    nc = await stack.nc()
    for n in range(8):
        await submit(nc, batch(f"p{n}", 40))
    db = await stack.db()
    await wait_for(lambda: db.fetchval(
        "SELECT count(*) = 8 FROM batchyard.batches WHERE status = 'submitted'"), 60)
    await stack.emulator.set_key(KEY, "expired")
    await wait_for(lambda: n_parked(stack, 8), 60, what="8 parked polls")
    assert await statuses(db) == {"auth_failed": 8}
    await rotate(stack, NEW_KEY)
    await wait_for(lambda: db.fetchval(
        "SELECT count(*) = 8 FROM batchyard.batches WHERE status = 'submitted'"), 60,
        what="8 polls replayed")
    await stack.emulator.advance(600)
    assert await wait_finished(stack, 8, timeout=120) == {"succeeded": 8}
    names = sorted(j["display_name"] for j in (await stack.emulator.state())["jobs"])
    assert names == sorted(f"p{n}:0" for n in range(8))
    await db.close()
    await nc.close()


async def test_recovery_killed_mid_drain_replays_each_once(stack: Stack) -> None:
    """A recovery pod killed -9 mid-drain: every parked message is replayed exactly once."""
    nc = await stack.nc()
    js = nc.jetstream()
    for c in (defs.RECOVERY, defs.REPLAY):
        await js.add_consumer(c.stream, c.config.evolve(ack_wait=3.0))
    await stack.emulator.set_key(KEY, "expired")
    await stack.emulator.set_key(NEW_KEY, "valid")
    await stack.pod("submit", "poll")
    await stack.pod("key-health")
    for n in range(150):
        await submit(nc, batch(f"r{n}", 11))
    await wait_for(lambda: n_parked(stack, 150), 90, what="150 parked")
    doomed = await stack.pod("recovery")
    await rotate(stack, NEW_KEY)
    await wait_for(lambda: _parked_below(stack, 140), 60, what="drain started")
    await doomed.kill()
    await stack.pod("recovery")
    await stack.pod("recovery")
    assert await wait_finished(stack, 150, timeout=180) == {"succeeded": 150}
    names = [j["display_name"] for j in (await stack.emulator.state())["jobs"]]
    assert len(names) == len(set(names)) == 150
    assert await parked(stack) == 0
    await nc.close()


async def _parked_below(stack: Stack, n: int) -> bool:
    return await parked(stack) < n


async def test_key_valid_while_recovery_is_down_is_drained_when_it_starts(stack: Stack) -> None:
    """key.valid published with no recovery pod running is acted on when one starts."""
    await stack.emulator.set_key(KEY, "expired")
    await stack.emulator.set_key(NEW_KEY, "valid")
    await stack.pod("submit", "poll")
    await stack.pod("key-health")
    nc = await stack.nc()
    for n in range(5):
        await submit(nc, batch(f"late{n}", 12))
    await wait_for(lambda: n_parked(stack, 5), 60)
    await rotate(stack, NEW_KEY)
    await wait_for(lambda: _has(nc, subjects.KEY_VALID), 30, what="key.valid")
    await asyncio.sleep(1)
    assert await parked(stack) == 5
    await stack.pod("recovery")
    assert await wait_finished(stack, 5, timeout=60) == {"succeeded": 5}
    await nc.close()


async def _has(nc: object, subject: str) -> bool:
    return bool(await stream_messages(nc, subject))  # type: ignore[arg-type]


async def test_rotation_to_another_bad_key_stays_parked(stack: Stack) -> None:
    """Rotating to a key that is also bad: key.invalid is announced, nothing replays or is lost."""
    await stack.emulator.set_key(KEY, "revoked")
    await stack.emulator.set_key(BAD_KEY, "invalid")
    await everything(stack)
    nc = await stack.nc()
    for n in range(6):
        await submit(nc, batch(f"bad{n}", 12))
    await wait_for(lambda: n_parked(stack, 6), 60)
    await rotate(stack, BAD_KEY)
    await wait_for(lambda: _invalid_for(nc, BAD_KEY), 30, what="key.invalid for the new key")
    await asyncio.sleep(2)
    assert await parked(stack) == 6
    db = await stack.db()
    assert await statuses(db) == {"auth_failed": 6}
    invalid = [decode(m, KeyInvalid) for m in await stream_messages(nc, subjects.KEY_INVALID)]
    assert invalid and all(i.fingerprint for i in invalid)
    assert await stream_messages(nc, subjects.KEY_VALID) == []
    await db.close()
    await nc.close()


async def _invalid_for(nc: object, key: str) -> bool:
    from consumers.gemini.keys import fingerprint

    msgs = await stream_messages(nc, subjects.KEY_INVALID)  # type: ignore[arg-type]
    return any(decode(m, KeyInvalid).fingerprint == fingerprint(key) for m in msgs)


async def test_recovery_disabled_waits_for_parked_replay(stack: Stack) -> None:
    """With recovery disabled nothing replays by itself; `batchyard parked replay` does it."""
    await stack.emulator.set_key(KEY, "expired")
    await stack.emulator.set_key(NEW_KEY, "valid")
    await everything(stack, BATCHYARD_AUTH_RECOVERY_ENABLED="false")
    nc = await stack.nc()
    for n in range(4):
        await submit(nc, batch(f"manual{n}", 12))
    await wait_for(lambda: n_parked(stack, 4), 60)
    await rotate(stack, NEW_KEY)
    await wait_for(lambda: _has(nc, subjects.KEY_VALID), 30, what="key.valid")
    await asyncio.sleep(2)
    assert await parked(stack) == 4
    code, out = await stack.cli("parked", "replay")
    assert code == 0 and "replayed 4" in out, out
    assert await wait_finished(stack, 4, timeout=60) == {"succeeded": 4}
    await nc.close()
