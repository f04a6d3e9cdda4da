"""A running batchyard over real servers: pods are OS processes of `batchyard run`."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import nats
from nats.aio.client import Client as NATS

from events import subjects
from events.payloads import Item, SubmitRequest
from events.publisher import publish
from sandbox.natsd import NatsServer

FAST = {
    "BATCHYARD_POLL_INTERVAL": "300ms",
    "BATCHYARD_KEY_CHECK_INTERVAL": "2s",
    "BATCHYARD_HTTP_PORT": "0",
    "BATCHYARD_DRAIN_TIMEOUT": "10s",
    "BATCHYARD_GEMINI_TIMEOUT": "20s",
    "BATCHYARD_LOG_LEVEL": "info",
    # Packing (on by default, 20s) is tested in test_packing.py and by the chaos suite;
    # elsewhere a test means one batch, one job, and no 20 s wait.
    "BATCHYARD_PACK_WAIT": "0",
}


class Pod:
    """One `python -m consumers run ROLE...` process with its log file."""

    def __init__(self, proc: asyncio.subprocess.Process, log: Path, roles: tuple[str, ...]):
        self.proc = proc
        self.log = log
        self.roles = roles

    async def terminate(self, timeout: float = 30) -> int:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(self.proc.wait(), timeout)

    async def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()

    def text(self) -> str:
        return self.log.read_text(errors="replace")


@dataclass
class Stack:
    natsd: NatsServer
    database_url: str
    emulator: Any
    key: str
    tmp: Path
    pods: list[Pod] = field(default_factory=list)
    overrides: dict[str, str] = field(default_factory=dict)
    # Every connection handed out, closed at teardown even when a test's assert failed
    # before its own close.
    opened: list[NATS | asyncpg.Connection] = field(default_factory=list)

    @property
    def key_file(self) -> Path:
        return self.tmp / "gemini.key"

    def env(self, **overrides: str) -> dict[str, str]:
        return {
            "PATH": os.environ.get("PATH", ""),
            "NATS_URL": self.natsd.url,
            "DATABASE_URL": self.database_url,
            "GEMINI_API_KEY_FILE": str(self.key_file),
            "GEMINI_BASE_URL": self.emulator.url,
            **FAST, **self.overrides, **overrides,
        }

    async def pod(self, *roles: str, **env: str) -> Pod:
        log = self.tmp / f"pod-{len(self.pods)}-{'-'.join(roles)}.log"
        with log.open("wb") as f:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "consumers", "run", *roles, env=self.env(**env),
                stdin=asyncio.subprocess.DEVNULL, stdout=f, stderr=f)
        pod = Pod(proc, log, roles)
        self.pods.append(pod)
        return pod

    async def pipeline_pods(self, **env: str) -> None:
        """Two submit pods and two poll pods."""
        for _ in range(2):
            await self.pod("submit", **env)
            await self.pod("poll", **env)

    async def started(self, timeout: float = 60.0) -> None:
        """Wait until every pod has logged pod.started (bound to its consumers)."""
        await wait_for(lambda: _all_started(self.pods), timeout, what="pods started")

    async def stop_all(self) -> None:
        for conn in self.opened:
            # asyncpg's is_closed is a method, nats-py's a property.
            closed = conn.is_closed() if isinstance(conn, asyncpg.Connection) else conn.is_closed
            if not closed:
                await conn.close()
        for pod in self.pods:
            if pod.proc.returncode is None:
                try:
                    await pod.terminate(30)
                except TimeoutError:
                    await pod.kill()

    def logs(self) -> str:
        return "\n".join(p.text() for p in self.pods)

    async def cli(self, *args: str) -> tuple[int, str]:
        """Run `batchyard ARGS...` against this stack: its exit code and its output."""
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "consumers", *args, env=self.env(),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        out, _ = await proc.communicate()
        return proc.returncode or 0, out.decode()

    async def nc(self) -> NATS:
        nc = await nats.connect(self.natsd.url)
        self.opened.append(nc)
        return nc

    async def db(self) -> asyncpg.Connection:
        db = await asyncpg.connect(self.database_url)
        self.opened.append(db)
        return db


async def _all_started(pods: list[Pod]) -> bool:
    return all('"pod.started"' in p.text() for p in pods)


def batch(batch_id: str, n: int, *, attempt: int = 0, prefix: str = "",
          **fields: Any) -> SubmitRequest:
    items = [Item(f"{prefix or batch_id}-{i}", f"chunk {i} of {batch_id}: def f{i}(): pass")
             for i in range(n)]
    return SubmitRequest(batch_id=batch_id, items=items, attempt=attempt, **fields)


async def submit(nc: NATS, req: SubmitRequest) -> None:
    await publish(nc.jetstream(), subjects.SUBMIT, req, subjects.submit_id(req.batch_id,
                                                                              req.attempt))


async def wait_for(check: Callable[[], Awaitable[Any]], timeout: float = 60.0,
                   every: float = 0.2, what: str = "condition") -> Any:
    """Poll `check` until it returns something truthy; fail after `timeout`."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


async def statuses(db: asyncpg.Connection) -> dict[str, int]:
    rows = await db.fetch("SELECT status, count(*) AS n FROM batchyard.batches GROUP BY status")
    return {r["status"]: r["n"] for r in rows}


async def wait_finished(stack: Stack, n: int, timeout: float = 120.0) -> dict[str, int]:
    """Wait until `n` batches rest in a final status; returns the status counts."""
    db = await stack.db()
    try:
        async def done() -> dict[str, int] | None:
            counts = await statuses(db)
            final = sum(v for k, v in counts.items()
                        if k in ("succeeded", "partial", "failed", "dead", "cancelled"))
            return counts if final >= n else None
        return await wait_for(done, timeout, what=f"{n} finished batches")  # type: ignore[no-any-return]
    finally:
        await db.close()


async def stream_messages(nc: NATS, subject: str) -> list[bytes]:
    """Every message on `subject` in the BATCH stream (an ephemeral ordered read)."""
    js = nc.jetstream()
    sub = await js.subscribe(subject, ordered_consumer=True, deliver_policy=None)
    out: list[bytes] = []
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=0.5)
            except nats.errors.TimeoutError:
                return out
            out.append(msg.data)
    finally:
        await sub.unsubscribe()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _default_sigint() -> None:
    # A job started with `&` by a non-interactive shell (`make test &`, a script running
    # several suites side by side on a busy machine) has SIGINT *ignored*, and children
    # and exec keep it so. Python then installs no KeyboardInterrupt handler, nor does
    # asyncio.run, so the SIGINT below is dropped and the script sleeps on. Ctrl-C at a
    # terminal always has the default action, which is what these tests simulate.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


async def interrupted(script: str, timeout: float) -> list[str]:
    """Run `script` in a fresh Python, take the first line it prints, then SIGINT it: it
    must exit 130 (its own KeyboardInterrupt handling) within 30 s. The line's words."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, stdout=asyncio.subprocess.PIPE,
        preexec_fn=_default_sigint)
    assert proc.stdout
    line = (await asyncio.wait_for(proc.stdout.readline(), timeout)).decode().split()
    proc.send_signal(signal.SIGINT)
    assert await asyncio.wait_for(proc.wait(), 30) == 130
    return line


async def succeeded_at_least(db: asyncpg.Connection, n: int, timeout: float = 60.0) -> None:
    """Wait until `n` batches have succeeded."""
    await wait_for(lambda: db.fetchval("SELECT count(*) >= $1 FROM batchyard.batches "
                                       "WHERE status = 'succeeded'", n), timeout)
