"""A throwaway PostgreSQL cluster on a free loopback port.

initdb refuses to run as root, so as root the server runs as the `postgres` user
(created by Debian's postgresql packages).
"""

from __future__ import annotations

import asyncio
import glob
import os
import pwd
import shutil
import signal
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg

from sandbox import _proc

DATABASE = "batchyard"


def pg_bin(name: str) -> str:
    """A PostgreSQL server binary from PATH or Debian's versioned directories."""
    found = shutil.which(name)
    if found:
        return found
    for candidate in sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True):
        return candidate
    raise RuntimeError(f"{name} not found: install the PostgreSQL server (make deps)")


def _run_as() -> str | None:
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        raise RuntimeError("running as root needs a 'postgres' user to run PostgreSQL") from None
    return "postgres"


def _check_reachable(root: Path, user: str) -> None:
    # initdb's own error for this ("could not change directory") names no directory.
    for parent in root.resolve().parents:
        if not parent.stat().st_mode & 0o001:
            raise RuntimeError(f"PostgreSQL runs as {user!r}, which cannot enter {parent} "
                               f"(no search permission for others): choose a directory "
                               f"under one it can, e.g. /tmp")


class PostgresServer:
    """One postgres process; `stop()` and `start()` again keep port and data."""

    def __init__(self, root: Path, *, port: int = 0, options: tuple[str, ...] = ()) -> None:
        self.root = root
        self.options = options  # extra `-c name=value` settings, e.g. ssl=on
        self.port = port or _proc.free_port()
        self.user = _run_as()
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{DATABASE}"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def initialized(self) -> bool:
        """Whether `data` already holds a cluster (a kept directory, started again)."""
        return (self.data / "PG_VERSION").exists()

    async def init(self) -> None:
        if self.user:
            _check_reachable(self.root, self.user)
            shutil.chown(self.root, self.user)
        initdb = await _proc.spawn(
            [pg_bin("initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust",
             "--encoding=UTF8", "--no-sync", "-N"],
            user=self.user, stderr=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        )
        out, err = await initdb.communicate()
        if initdb.returncode:
            raise RuntimeError(f"initdb failed: {(out + err).decode(errors='replace')[-2000:]}")

    async def start(self, timeout: float = 30.0) -> None:
        log = self.root / "postgres.log"
        argv = [pg_bin("postgres"), "-D", str(self.data), "-p", str(self.port),
                "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.root}",
                "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
                "-c", "max_connections=200"]
        for option in self.options:
            argv += ["-c", option]
        with open(log, "ab") as f:
            if self.user:
                shutil.chown(log, self.user)
            self.proc = await _proc.spawn(argv, user=self.user, stderr=f.fileno())
        try:
            async with asyncio.timeout(timeout):
                while True:
                    if self.proc.returncode is not None:
                        raise RuntimeError(f"postgres exited: {log.read_text()[-2000:]}")
                    try:
                        conn = await asyncpg.connect(
                            host="127.0.0.1", port=self.port, user="postgres",
                            database="postgres", timeout=2)
                    except (OSError, asyncpg.PostgresError):
                        await asyncio.sleep(0.05)
                        continue
                    try:
                        exists = await conn.fetchval(
                            "SELECT 1 FROM pg_database WHERE datname = $1", DATABASE)
                        if not exists:
                            await conn.execute(f"CREATE DATABASE {DATABASE}")
                    finally:
                        await conn.close()
                    return
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        # SIGINT is PostgreSQL's "fast" shutdown: clients are disconnected at once.
        if self.proc:
            await _proc.stop(self.proc, signal.SIGINT)


@asynccontextmanager
async def postgres_server() -> AsyncIterator[PostgresServer]:
    """initdb into a temp dir and start; stop and remove the dir on exit."""
    tmp = Path(tempfile.mkdtemp(prefix="batchyard-pg-"))
    server = PostgresServer(tmp)
    try:
        await server.init()
        await server.start()
        yield server
    finally:
        await server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
