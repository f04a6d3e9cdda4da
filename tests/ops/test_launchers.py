"""The sandbox launchers start real servers and leave nothing behind."""

from __future__ import annotations

import os
import shutil
import tempfile
import textwrap
from pathlib import Path

import asyncpg
import nats
import pytest

from sandbox.natsd import nats_server
from sandbox.pg import PostgresServer, postgres_server
from tests.harness import Stack, alive, interrupted


async def test_nats_restart_keeps_port_and_messages() -> None:
    """A stopped and restarted nats-server keeps its port and its file storage."""
    async with nats_server() as server:
        nc = await nats.connect(server.url)
        js = nc.jetstream()
        await js.add_stream(name="S", subjects=["s"])
        await js.publish("s", b"kept")
        await nc.close()
        port = server.port
        await server.stop()
        await server.start()
        assert server.port == port
        nc = await nats.connect(server.url)
        assert (await nc.jetstream().get_msg("S", 1)).data == b"kept"
        await nc.close()
        store, pid = server.store_dir, server.proc.pid if server.proc else 0
    assert not store.exists() and not alive(pid)


async def test_postgres_starts_and_is_removed() -> None:
    """The PostgreSQL launcher serves the batchyard database and removes its dir."""
    async with postgres_server() as server:
        conn = await asyncpg.connect(server.url)
        assert await conn.fetchval("SELECT current_database()") == "batchyard"
        await conn.close()
        root, pid = server.root, server.proc.pid if server.proc else 0
    assert not root.exists() and not alive(pid)


async def test_ctrl_c_cleans_up() -> None:
    """SIGINT to a process holding both servers stops them and removes their dirs."""
    script = textwrap.dedent("""
        import asyncio, sys
        from sandbox.natsd import nats_server
        from sandbox.pg import PostgresServer, postgres_server
        async def main():
            async with nats_server() as n, postgres_server() as p:
                print(n.proc.pid, p.proc.pid, n.store_dir, p.root, flush=True)
                await asyncio.sleep(60)
        try:
            asyncio.run(main())
        except KeyboardInterrupt:
            sys.exit(130)
    """)
    line = await interrupted(script, 30)
    npid, ppid, ndir, pdir = int(line[0]), int(line[1]), line[2], line[3]
    assert not alive(npid) and not alive(ppid)
    assert not os.path.exists(ndir) and not os.path.exists(pdir)


@pytest.mark.skipif(os.geteuid() != 0, reason="only root hands PostgreSQL to another user")
async def test_postgres_says_which_directory_it_cannot_enter() -> None:
    """As root, a data directory under one `postgres` cannot enter fails naming it."""
    closed = Path(tempfile.mkdtemp(prefix="batchyard-closed-"))  # 0700, root's
    try:
        with pytest.raises(RuntimeError, match=f"cannot enter {closed}"):
            await PostgresServer(closed / "pg").init()
    finally:
        shutil.rmtree(closed, ignore_errors=True)


async def test_the_stack_closes_every_connection_it_handed_out(stack: Stack) -> None:
    """A test whose assert fails before its own close leaks nothing: teardown closes it."""
    nc, db = await stack.nc(), await stack.db()
    await stack.stop_all()
    assert nc.is_closed and db.is_closed()
