"""What every role shares in one process: connections, store, Gemini client, key."""

from __future__ import annotations

from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime

import nats.errors
import structlog
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.object_store import ObjectStore

from consumers.batch.quota import Quota
from consumers.connect import connect_nats, create_pool
from consumers.gemini.client import Gemini
from consumers.gemini.guard import KeyGuard
from consumers.gemini.keys import KeySource
from consumers.settings import Settings
from consumers.store.batches import Store
from events import jetstream as defs

log = structlog.get_logger("batchyard")


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class App:
    settings: Settings
    nc: NATS
    js: JetStreamContext
    store: Store
    keys: KeySource
    gemini: Gemini
    inputs: ObjectStore
    kept: ObjectStore
    guard: KeyGuard
    quota: Quota
    stack: AsyncExitStack = field(default_factory=AsyncExitStack)

    @classmethod
    async def open(cls, settings: Settings, name: str = "batchyard", roles: int = 1) -> App:
        stack = AsyncExitStack()
        try:
            nc = await connect_nats(settings, name=name)
            stack.push_async_callback(_close_nats, nc)
            # Each message in flight may hold a batch's claim (one connection) while it
            # queries with another: size the pool so claims can never starve queries.
            pool = await create_pool(settings, max_size=2 * settings.concurrency * roles + 2)
            stack.push_async_callback(pool.close)
            js = nc.jetstream(timeout=10)
            keys = KeySource(settings.gemini_api_key, settings.gemini_api_key_file)
            guard = KeyGuard(await js.key_value(defs.KEY_HEALTH), keys)
            gemini = Gemini(settings, keys, may_call=guard.may_call)
            stack.push_async_callback(gemini.close)
            inputs = await js.object_store(defs.BATCH_INPUTS)
            kept = await js.object_store(defs.BATCH_KEPT)
            store = Store(pool)
            quota = Quota(store, await js.key_value(defs.QUOTA), settings)
        except BaseException:
            await stack.aclose()
            raise
        return cls(settings, nc, js, store, keys, gemini, inputs, kept, guard, quota, stack)

    async def close(self) -> None:
        await self.stack.aclose()


async def _close_nats(nc: NATS) -> None:
    if nc.is_closed:
        return
    try:
        await nc.drain()
    except (nats.errors.Error, TimeoutError) as exc:  # reconnecting: nothing left to flush
        log.warning("nats.drain_failed", error=repr(exc))
        await nc.close()
