"""A throwaway JetStream cluster of nats-server processes on free loopback ports."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import nats
from nats.errors import Error as NatsError

from sandbox import _proc
from sandbox.natsd import NatsServer

CLUSTER_NAME = "batchyard"


class ClusterNode(NatsServer):
    """One member: fixed client, route and monitoring ports, so a restart rejoins as itself."""

    def __init__(self, name: str, store_dir: Path, *, port: int, cluster_port: int,
                 http_port: int, routes: list[str]) -> None:
        super().__init__(store_dir, port=port, args=(
            "-n", name, "--cluster_name", CLUSTER_NAME,
            "--cluster", f"nats://127.0.0.1:{cluster_port}",
            "--routes", ",".join(routes), "-m", str(http_port),
        ))
        self.name = name
        self.cluster_port = cluster_port
        self.http_port = http_port

    @property
    def running(self) -> bool:
        """Started and not (yet) seen to exit."""
        return self.proc is not None and self.proc.returncode is None

    async def healthy(self, session: aiohttp.ClientSession) -> bool:
        """The server's /healthz: JetStream up, a meta leader known, its replicas current."""
        try:
            url = f"http://127.0.0.1:{self.http_port}/healthz"
            async with session.get(url, timeout=aiohttp.ClientTimeout(total=2)) as resp:
                return resp.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    async def wait_healthy(self, timeout: float = 30.0) -> None:
        """Wait until /healthz answers 200."""
        async with aiohttp.ClientSession() as session, asyncio.timeout(timeout):
            while not await self.healthy(session):
                if self.proc is not None and self.proc.returncode is not None:
                    raise RuntimeError(f"nats-server {self.name} exited: "
                                       f"{self.log_path.read_text(errors='replace')[-2000:]}")
                await asyncio.sleep(0.1)


class NatsCluster:
    """The members of one cluster; `.url` is what NATS_URL takes."""

    def __init__(self, servers: list[ClusterNode]) -> None:
        self.servers = servers

    @property
    def urls(self) -> list[str]:
        return [s.url for s in self.servers]

    @property
    def url(self) -> str:
        return ",".join(self.urls)

    def server(self, name: str) -> ClusterNode:
        """The member called `name` (as stream and consumer info name leaders)."""
        for s in self.servers:
            if s.name == name:
                return s
        raise KeyError(name)

    async def wait_ready(self, timeout: float = 30.0) -> None:
        """Every running member healthy, and JetStream answering through the cluster."""
        async with asyncio.timeout(timeout):
            await asyncio.gather(*(s.wait_healthy(timeout) for s in self.servers if s.running))
            urls = [s.url for s in self.servers if s.running]
            nc = await nats.connect(servers=urls, connect_timeout=2, max_reconnect_attempts=-1,
                                    reconnect_time_wait=0.2)
            try:
                js = nc.jetstream(timeout=2)
                while True:
                    try:
                        await js.account_info()
                        return
                    except (NatsError, TimeoutError):
                        await asyncio.sleep(0.1)
            finally:
                await nc.close()

    async def stop(self) -> None:
        # All at once: each stop may take its whole grace period, and one after another
        # those would add up (3 nodes x 10 s) to more than a Ctrl-C should take.
        await asyncio.gather(*(s.stop() for s in self.servers))


@asynccontextmanager
async def nats_cluster(n: int = 3, timeout: float = 30.0) -> AsyncIterator[NatsCluster]:
    """Start `n` routed JetStream servers in a temp dir; stop them and remove it on exit."""
    if n < 2:
        raise ValueError("a cluster needs two servers or more; sandbox.natsd starts one")
    tmp = Path(tempfile.mkdtemp(prefix="batchyard-cluster-"))
    cluster_ports = [_proc.free_port() for _ in range(n)]
    # Every member gets the same list, itself included, as deploy/nats/cluster does.
    routes = [f"nats://127.0.0.1:{p}" for p in cluster_ports]
    servers: list[ClusterNode] = []
    for i in range(n):
        store = tmp / f"n{i}"
        store.mkdir()
        servers.append(ClusterNode(f"n{i}", store, port=_proc.free_port(),
                                   cluster_port=cluster_ports[i],
                                   http_port=_proc.free_port(), routes=routes))
    cluster = NatsCluster(servers)
    try:
        for s in servers:
            await s.start()
        await cluster.wait_ready(timeout)
        yield cluster
    finally:
        try:
            await cluster.stop()
        finally:
            # Whatever stop() could not reach (it was cancelled) dies here.
            for s in servers:
                s.kill()
            shutil.rmtree(tmp, ignore_errors=True)
