"""Recovery: replaying 10,000 parked messages vs raw pipelined publish_async, and the
time from `key.valid` to the first replayed submission with a recovery pod running."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import asyncpg
import nats

from consumers.ops import provision
from consumers.roles import recovery
from consumers.store.batches import Store
from consumers.store.migrate import Migrator
from events import jetstream as defs
from events import subjects
from events.payloads import AuthFailed, ErrorDetail, KeyValid, encode
from sandbox.natsd import nats_server
from sandbox.pg import postgres_server

N = 10_000


def _parked(n: int) -> AuthFailed:
    payload = {"v": 1, "batch_id": f"b{n}", "items": [{"id": f"i{n}", "text": "some code"}]}
    return AuthFailed(batch_id=f"b{n}", stage="submit", subject="batch.submit", payload=payload,
                      key_fingerprint="0123456789ab", failed_at=datetime.now(UTC),
                      error=ErrorDetail(code=400, status="INVALID_ARGUMENT", message="expired"))


async def _park_all(js: Any, pool: asyncpg.Pool, n: int, tag: str) -> None:
    await pool.execute("TRUNCATE batchyard.batches CASCADE")
    await pool.executemany(
        "INSERT INTO batchyard.batches (batch_id, status, model) VALUES ($1, 'auth_failed', 'm')",
        [(f"b{k}",) for k in range(n)])
    for k in range(n):
        await js.publish_async(subjects.AUTH_FAILED, encode(_parked(k)),
                               headers={"Nats-Msg-Id": f"parked:{tag}:{k}"})
    await js.publish_async_completed()


async def raw_publish(js: Any, n: int) -> float:
    bodies = [encode(_parked(k).payload) for k in range(n)]
    start = time.perf_counter()
    futures = [await js.publish_async("bench.raw", body, headers={"Nats-Msg-Id": f"raw:{k}"})
               for k, body in enumerate(bodies)]
    await asyncio.gather(*futures)
    return n / (time.perf_counter() - start)


async def main() -> dict[str, Any]:
    async with nats_server() as natsd, postgres_server() as pg:
        nc = await nats.connect(natsd.url, pending_size=256 * 1024 * 1024)
        js = nc.jetstream()
        await provision.apply(js)
        await js.add_stream(name="BENCH", subjects=["bench.raw"], duplicate_window=120)
        conn = await asyncpg.connect(pg.url)
        await Migrator(conn).up()
        await conn.close()
        pool = await asyncpg.create_pool(pg.url, min_size=2, max_size=10)
        assert pool is not None
        app: Any = SimpleNamespace(js=js, nc=nc, store=Store(pool),
                                   guard=SimpleNamespace(usable=lambda fp: True),
                                   keys=SimpleNamespace(fingerprint="0123456789ab"))
        raw = await raw_publish(js, N)
        await _park_all(js, pool, N, "drain")
        start = time.perf_counter()
        if os.environ.get("BENCH_PROFILE"):
            import cProfile
            import pstats
            prof = cProfile.Profile()
            prof.enable()
        replayed = await recovery.drain(app)
        if os.environ.get("BENCH_PROFILE"):
            prof.disable()
            pstats.Stats(prof).sort_stats("tottime").print_stats(18)
        ours = replayed / (time.perf_counter() - start)
        left = (await js.stream_info(defs.BATCH_PARKED)).state.messages
        assert replayed == N and left == 0, (replayed, left)
        assert await pool.fetchval("SELECT count(*) FROM batchyard.batches "
                                   "WHERE status = 'pending_submission'") == N
        first = await _first_replay_latency(natsd.url, pg.url, js, pool)
        await pool.close()
        await nc.close()
    return {"messages": N, "raw_publish_async_per_s": round(raw),
            "replay_per_s": round(ours), "ratio": round(ours / raw, 3),
            "key_valid_to_first_replay_s": round(first, 3)}


async def _first_replay_latency(nats_url: str, db_url: str, js: Any, pool: asyncpg.Pool) -> float:
    await _park_all(js, pool, 100, "latency")
    env = {**os.environ, "NATS_URL": nats_url, "DATABASE_URL": db_url,
           "GEMINI_API_KEY": "unused", "BATCHYARD_HTTP_PORT": "0",
           "BATCHYARD_LOG_LEVEL": "warning"}
    pod = await asyncio.create_subprocess_exec(sys.executable, "-m", "consumers", "run",
                                               "recovery", env=env)
    try:
        await asyncio.sleep(2)  # the pod is up and bound
        seen = asyncio.get_running_loop().create_future()

        async def on_submit(_: Any) -> None:
            if not seen.done():
                seen.set_result(time.perf_counter())

        sub = await js.subscribe(subjects.SUBMIT, deliver_policy=nats.js.api.DeliverPolicy.NEW,
                                 cb=on_submit)
        start = time.perf_counter()
        await js.publish(subjects.KEY_VALID, encode(KeyValid(
            fingerprint="0123456789ab", model="m", checked_at=datetime.now(UTC))))
        first = await asyncio.wait_for(seen, 30) - start
        await sub.unsubscribe()
        return first
    finally:
        pod.terminate()
        await pod.wait()


if __name__ == "__main__":
    import json

    print(json.dumps(asyncio.run(main()), indent=2))
