"""One scenario's world: its own nats-server (or cluster), database, emulator and pods."""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import asyncpg
import nats
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from consumers.ops import provision
from consumers.store.migrate import Migrator
from events import jetstream as defs
from sandbox.cluster import NatsCluster, nats_cluster
from sandbox.emulator.testing import EmulatorProcess, launch_emulator
from sandbox.natsd import NatsServer, nats_server
from sandbox.pg import PostgresServer
from tests.chaos.ledger import Ledger
from tests.chaos.profiles import Profile
from tests.harness import Pod, Stack

# Packing on, as by default, with a wait the scenarios' seconds can hold (a batch's
# every attempt may wait this long for its pack).
PACK_WAIT = "1s"
KEY = "AIzaSyChaosKeyValid0000000000000000000001"
# Two pods per role: submit and poll alone, key-health with recovery.
POD_ROLES: tuple[tuple[str, ...], ...] = (
    ("submit",), ("submit",), ("poll",), ("poll",),
    ("key-health", "recovery"), ("key-health", "recovery"))
_databases = itertools.count(1)


@dataclass
class World:
    """Everything a scenario acts on, and what it did to it."""

    name: str
    profile: Profile
    stack: Stack
    pg: PostgresServer
    nc: NATS
    js: JetStreamContext
    nats: NatsServer | None = None
    cluster: NatsCluster | None = None
    rng: random.Random = field(default_factory=random.Random)
    ledger: Ledger = field(default_factory=Ledger)
    keys: set[str] = field(default_factory=set)
    killed: set[int] = field(default_factory=set)  # pids killed on purpose
    faults: Counter[str] = field(default_factory=Counter)
    figures: dict[str, Any] = field(default_factory=dict)
    last_fault: float | None = None

    @property
    def emulator(self) -> EmulatorProcess:
        emulator: EmulatorProcess = self.stack.emulator
        return emulator

    def fault(self, kind: str, n: int = 1) -> None:
        """Count an injected fault and remember when the last one happened."""
        self.faults[kind] += n
        self.mark()

    def mark(self) -> None:
        """Note that a fault is happening now (a drain is timed from the last one)."""
        self.last_fault = time.monotonic()

    async def pods(self, **env: str) -> None:
        """Start two pods per role and wait until they are bound."""
        for roles in POD_ROLES:
            await self.stack.pod(*roles, **env)
        await self.stack.started(timeout=120)

    def crashed(self) -> list[Pod]:
        """Pods that exited without being killed on purpose."""
        return [p for p in self.stack.pods
                if p.proc.returncode is not None and p.proc.pid not in self.killed]

    async def until(self, cond: Any, timeout: float, every: float = 0.5) -> bool:
        """`wait` that gives up early once a pod has crashed (the verdict is fail then)."""
        async def done() -> bool:
            return bool(self.crashed()) or bool(await cond())
        return await wait(done, timeout, every) and not self.crashed()

    def live_pods(self) -> list[Pod]:
        return [p for p in self.stack.pods if p.proc.returncode is None]

    async def kill(self, pod: Pod) -> None:
        """kill -9 one pod; it counts as killed on purpose."""
        self.killed.add(pod.proc.pid)
        await pod.kill()
        self.fault("pod_kill9")

    async def db(self) -> asyncpg.Connection:
        return await asyncpg.connect(self.stack.database_url, timeout=10)


async def connect(url: str) -> NATS:
    """A client that rides out restarts and failovers (a cluster URL is comma-separated)."""
    return await nats.connect(servers=url.split(","), connect_timeout=2,
                              max_reconnect_attempts=-1, reconnect_time_wait=0.2,
                              error_cb=_quiet, disconnected_cb=_nothing, reconnected_cb=_nothing)


async def _quiet(exc: Exception) -> None:
    """Outages are what the suite causes: the client's reconnect errors are expected."""


async def _nothing() -> None:
    pass


async def _database(pg: PostgresServer, name: str) -> str:
    db = f"chaos_{name}_{os.getpid()}_{next(_databases)}"
    admin = await asyncpg.connect(pg.url, timeout=10)
    try:
        await admin.execute(f"CREATE DATABASE {db}")
    finally:
        await admin.close()
    url = pg.url.rsplit("/", 1)[0] + f"/{db}"
    conn = await asyncpg.connect(url, timeout=10)
    try:
        await Migrator(conn).up()
    finally:
        await conn.close()
    return url


@asynccontextmanager
async def world(name: str, profile: Profile, pg: PostgresServer, *, cluster: bool = False,
                seed: int = 0, job_running_s: float = 1.0) -> AsyncIterator[World]:
    """Servers for one scenario (pods are started by the scenario); all stopped on exit."""
    tmp = Path(tempfile.mkdtemp(prefix=f"batchyard-chaos-{name}-"))
    async with AsyncExitStack() as stack:
        servers: Any
        if cluster:
            servers = await stack.enter_async_context(nats_cluster(3))
            natsd: Any = SimpleNamespace(url=servers.url)
        else:
            natsd = servers = await stack.enter_async_context(nats_server())
        nc = await connect(natsd.url)
        stack.push_async_callback(nc.close)
        js = nc.jetstream(timeout=10)
        await provision.apply(js, replicas=3 if cluster else 1)
        url = await _database(pg, name)
        emulator = await stack.enter_async_context(
            launch_emulator(keys=(KEY,), job_running_s=job_running_s))
        s = Stack(natsd=natsd, database_url=url, emulator=emulator, key=KEY, tmp=tmp,
                  overrides={"BATCHYARD_PACK_WAIT": PACK_WAIT})
        s.key_file.write_text(KEY + "\n")
        w = World(name=name, profile=profile, stack=s, pg=pg, nc=nc, js=js,
                  nats=None if cluster else servers, cluster=servers if cluster else None,
                  rng=random.Random(seed), keys={KEY})
        stack.push_async_callback(_kill_all, w)
        yield w
    if os.environ.get("CHAOS_KEEP_LOGS"):
        print(f"chaos: logs of {name} kept in {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)


async def _kill_all(w: World) -> None:
    for pod in w.stack.pods:
        await pod.kill()


async def consumer_numbers(js: JetStreamContext) -> dict[str, dict[str, int]]:
    """Pending, unacked and delivered counts of every durable, by name."""
    out: dict[str, dict[str, int]] = {}
    for c in defs.CONSUMERS:
        info = await js.consumer_info(c.stream, c.name)
        out[c.name] = {"pending": info.num_pending or 0, "ack_pending": info.num_ack_pending or 0,
                       "deliveries": info.delivered.consumer_seq or 0 if info.delivered else 0,
                       "stream_seq": info.delivered.stream_seq or 0 if info.delivered else 0}
    return out


async def subject_counts(js: JetStreamContext, stream: str) -> dict[str, int]:
    """How many messages each subject of `stream` holds."""
    info = await js.stream_info(stream, subjects_filter=">")
    return dict(info.state.subjects or {})


async def wait(cond: Any, timeout: float, every: float = 0.5) -> bool:
    """Poll the async `cond` until truthy; False after `timeout` (never raises on time)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if await cond():
                return True
        except (asyncpg.PostgresError, OSError, nats.errors.Error, TimeoutError):
            pass
        await asyncio.sleep(every)
    return False
