"""`batchyard dev`: a stack that stays up, keeps its data across restarts, and leaves
no process behind on Ctrl-C."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import nats

from tests.harness import _default_sigint, alive, wait_for

_EXPORT = re.compile(r"^\s*export (\w+)=(\S+)$")
_PID = re.compile(r"\(pid (\d+)")


@dataclass
class Dev:
    proc: asyncio.subprocess.Process
    env: dict[str, str] = field(default_factory=dict)
    pids: list[int] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)

    async def cli(self, *args: str) -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "consumers", *args, env={**os.environ, **self.env},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        out, _ = await proc.communicate()
        return proc.returncode or 0, out.decode()


def _children(pid: int) -> list[int]:
    """Every descendant of `pid` now (PostgreSQL's backends, for one)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            parents.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _mentioning(text: str) -> list[int]:
    """Processes whose command line names `text` (the stack's directory)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if text.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


@asynccontextmanager
async def dev(root: Path, *args: str) -> AsyncIterator[Dev]:
    """`batchyard dev --dir ROOT` until it says ready; on exit, Ctrl-C it and check that
    it exits 0 and that every process it started is gone."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "consumers", "dev", "--dir", str(root), *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        preexec_fn=_default_sigint, env={**os.environ, "BATCHYARD_DRAIN_TIMEOUT": "5s"})
    d = Dev(proc)
    assert proc.stdout

    async def read() -> None:
        assert proc.stdout
        async for raw in proc.stdout:
            d.lines.append(raw.decode().rstrip("\n"))

    async def ready() -> None:
        while not any(line.startswith("ready;") for line in d.lines):
            if proc.returncode is not None:
                raise AssertionError("batchyard dev exited:\n" + "\n".join(d.lines))
            await asyncio.sleep(0.1)

    reader = asyncio.create_task(read())
    try:
        await asyncio.wait_for(ready(), 120)
        for line in d.lines:
            if m := _EXPORT.match(line):
                d.env[m[1]] = m[2]
            d.pids += [int(p) for p in _PID.findall(line)]
        d.pids += [c for p in d.pids for c in _children(p)]
        yield d
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGINT)
        code = await asyncio.wait_for(proc.wait(), 60)
        await reader
    assert code == 0, "\n".join(d.lines)
    assert d.lines[-1].startswith("stopped;"), d.lines[-1]
    assert len(d.pids) >= 5  # nats-server, postmaster and its backends, emulator, roles
    assert [p for p in d.pids if alive(p)] == []
    assert _mentioning(str(root)) == []


def _items(n: int, tag: str) -> bytes:
    return b"".join(json.dumps({"id": f"{tag}-{i}", "text": f"def f{i}(): return {i}  # {tag}"})
                    .encode() + b"\n" for i in range(n))


async def _embeddings(url: str, batch_id: str) -> tuple[int, str | None]:
    db = await asyncpg.connect(url)
    try:
        n = await db.fetchval("SELECT count(*) FROM batchyard.embeddings WHERE batch_id = $1",
                              batch_id)
        status = await db.fetchval("SELECT status FROM batchyard.batches WHERE batch_id = $1",
                                   batch_id)
        return int(n), status
    finally:
        await db.close()


async def test_dev_stays_up_keeps_data_and_cleans_up() -> None:
    """Published, embedded, read back; Ctrl-C exits 0 with nothing left running; started
    again on the same directory the rows, the stream and the URLs are the same; --fresh
    starts empty."""
    root = Path(tempfile.mkdtemp(prefix="batchyard-dev-"))
    root.chmod(0o755)  # as root, PostgreSQL runs as `postgres` and must reach its data
    jsonl = root.parent / f"{root.name}.jsonl"
    jsonl.write_bytes(_items(25, "dev"))
    try:
        async with dev(root) as first:
            assert set(first.env) == {"NATS_URL", "DATABASE_URL", "GEMINI_BASE_URL"}
            code, out = await first.cli("publish", str(jsonl), "--batch-id", "dev-1")
            assert code == 0, out
            url = first.env["DATABASE_URL"]
            got = await wait_for(lambda: _kept(url, "dev-1", 25), 90, what="25 embeddings")
            assert got == (25, "succeeded")
            await wait_for(lambda: _status_shows(first, "embeddings 25"), 15,
                           what="the status line")

        async with dev(root) as second:
            assert second.env == first.env  # same ports: the exports still hold
            assert await _embeddings(url, "dev-1") == (25, "succeeded")
            nc = await nats.connect(second.env["NATS_URL"])
            try:
                assert (await nc.jetstream().stream_info("BATCH")).state.messages >= 2
            finally:
                await nc.close()
            code, out = await second.cli("status", "--json")
            assert code == 0 and json.loads(out)["batches"] == {"succeeded": 1}, out
            again = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "consumers", "dev", "--dir", str(root),
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
            out_b, _ = await asyncio.wait_for(again.communicate(), 30)
            assert again.returncode == 1 and b"already running" in out_b, out_b

        async with dev(root, "--fresh") as fresh:
            assert await _embeddings(fresh.env["DATABASE_URL"], "dev-1") == (0, None)
    finally:
        jsonl.unlink(missing_ok=True)
        shutil.rmtree(root, ignore_errors=True)


async def _kept(url: str, batch_id: str, n: int) -> tuple[int, str | None] | None:
    got = await _embeddings(url, batch_id)
    return got if got[0] >= n and got[1] == "succeeded" else None


async def _status_shows(d: Dev, text: str) -> bool:
    return any(line.startswith("status:") and text in line for line in d.lines)


async def test_real_needs_a_key() -> None:
    """--real without GEMINI_API_KEY says so and starts nothing."""
    root = Path(tempfile.mkdtemp(prefix="batchyard-dev-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("GEMINI_API_KEY")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "consumers", "dev", "--real", "--dir", str(root / "s"), env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2 and b"GEMINI_API_KEY" in out, out
    assert not (root / "s").exists()
    shutil.rmtree(root, ignore_errors=True)
