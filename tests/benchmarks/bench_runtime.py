"""Runtime overhead: a no-op role through batchyard's runtime vs raw fetch(100) + ack(),
with FastStream's NATS pull subscriber (`pip install .[bench]`) side by side."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import nats
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from consumers.errors import RetryableError
from consumers.ops import provision
from consumers.runtime import ACK, Outcome, Runtime
from events import jetstream as defs
from events import subjects
from sandbox.natsd import nats_server

N = 20_000
BODY = b'{"batch_id":"b","items":[{"id":"a","text":"t"}]}'


async def _fill(js: JetStreamContext, n: int) -> None:
    await js.purge_stream(defs.BATCH)
    pending = []
    for _ in range(n):
        pending.append(await js.publish_async(subjects.SUBMIT, BODY))
    await js.publish_async_completed()


async def _reset(js: JetStreamContext) -> None:
    await js.delete_consumer(defs.BATCH, defs.SUBMIT.name)
    await js.add_consumer(defs.BATCH, defs.SUBMIT.config)


async def raw(js: JetStreamContext, n: int) -> float:
    sub = await js.pull_subscribe_bind(durable=defs.SUBMIT.name, stream=defs.BATCH)
    done = 0
    start = time.perf_counter()
    while done < n:
        for msg in await sub.fetch(100, timeout=5):
            await msg.ack()
            done += 1
    elapsed = time.perf_counter() - start
    await sub.unsubscribe()
    return n / elapsed


class Noop:
    name = "submit"
    consumer = defs.SUBMIT

    def __init__(self, n: int, stop: asyncio.Event):
        self.left = n
        self.stop = stop

    async def ready(self) -> None:
        return None

    def retry_delay(self, msg: Msg, error: RetryableError) -> float:
        return 1.0

    async def handle(self, msg: Msg) -> Outcome:
        self.left -= 1
        if self.left == 0:
            self.stop.set()
        return ACK

    async def reject(self, msg: Msg, error: Any) -> Outcome:
        raise AssertionError("no rejects in this benchmark")

    async def park(self, msg: Msg, error: Any) -> Outcome:
        raise AssertionError("no parks in this benchmark")


async def runtime(js: JetStreamContext, n: int, concurrency: int) -> float:
    rt = Runtime(js, [], concurrency=concurrency, drain_timeout=5)
    role = Noop(n, rt.stop)
    rt.roles = [role]
    start = time.perf_counter()
    await rt.run()
    return n / (time.perf_counter() - start)


async def faststream(url: str, n: int, *, logging: bool) -> float | None:
    """FastStream 0.7's NATS pull subscriber on the same durable, no-op handler."""
    try:
        from faststream.nats import JStream, NatsBroker, PullSub
    except ImportError:
        return None
    broker = NatsBroker(url, **({} if logging else {"logger": None}))
    done = asyncio.Event()
    left = n

    @broker.subscriber(subjects.SUBMIT, stream=JStream(defs.BATCH, declare=False),
                       durable=defs.SUBMIT.name, pull_sub=PullSub(batch_size=100, timeout=5))
    async def noop(body: Any) -> None:
        nonlocal left
        left -= 1
        if left == 0:
            done.set()

    await broker.connect()
    start = time.perf_counter()
    await broker.start()
    await asyncio.wait_for(done.wait(), 120)
    elapsed = time.perf_counter() - start
    await broker.stop()
    return n / elapsed


async def main(rounds: int = 3) -> dict[str, Any]:
    async with nats_server() as server:
        nc = await nats.connect(server.url, pending_size=64 * 1024 * 1024)
        js = nc.jetstream()
        await provision.apply(js)
        results: dict[str, list[float]] = {"raw_fetch100_ack": [], "runtime_c100": [],
                                           "faststream_pull100": [],
                                           "faststream_pull100_logging": []}
        for _ in range(rounds):
            await _fill(js, N)
            results["raw_fetch100_ack"].append(await raw(js, N))
            await _reset(js)
            await _fill(js, N)
            results["runtime_c100"].append(await runtime(js, N, 100))
            await _reset(js)
            for key, logging in (("faststream_pull100", False),
                                 ("faststream_pull100_logging", True)):
                await _fill(js, N)
                rate = await faststream(server.url, N, logging=logging)
                if rate is not None:
                    results[key].append(rate)
                await _reset(js)
        await nc.close()
    best = {k: max(v) for k, v in results.items() if v}
    raw_best = best["raw_fetch100_ack"]
    out: dict[str, Any] = {
        "messages": N, "msg_per_s": {k: round(v) for k, v in best.items()},
        "spread_msg_per_s": {k: [round(min(v)), round(max(v))] for k, v in results.items() if v},
        "ratio_runtime_to_raw": round(best["runtime_c100"] / raw_best, 3)}
    if "faststream_pull100" in best:
        out["ratio_faststream_to_raw"] = round(best["faststream_pull100"] / raw_best, 3)
        out["ratio_runtime_to_faststream"] = round(
            best["runtime_c100"] / best["faststream_pull100"], 2)
    return out


if __name__ == "__main__":
    import json

    print(json.dumps(asyncio.run(main()), indent=2))
