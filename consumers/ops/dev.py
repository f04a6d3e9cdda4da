"""`batchyard dev`: a local stack that stays up until Ctrl-C and keeps its data.

nats-server, PostgreSQL and the Gemini emulator (or, with `--real`, the real API) with
every role in one `batchyard run all` process. The servers' data lives in one directory
(`./.batchyard/` unless `--dir`), and so do the ports they listen on, so that a stack
started again serves the same streams, the same tables and the same URLs. The emulator
keeps its files and jobs in memory: a job still running at Ctrl-C is gone after a restart.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import json
import os
import shlex
import shutil
import signal
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

import asyncpg
import nats

from consumers.app import App
from consumers.ops import provision
from consumers.ops.report import status
from consumers.settings import Settings
from consumers.store.migrate import Migrator
from sandbox import _proc
from sandbox.emulator.testing import launch_emulator
from sandbox.natsd import NatsServer
from sandbox.pg import PostgresServer

DEV_KEY = "AIzaSyDevStackKey00000000000000000000000"
PORTS = ("nats", "postgres", "emulator", "http")
# The emulator finishes a job in seconds; waits sized for the real API would hide that.
_EMULATOR_PACE = {"BATCHYARD_POLL_INTERVAL": "2s", "BATCHYARD_KEY_CHECK_INTERVAL": "10s",
                  "BATCHYARD_PACK_WAIT": "2s"}
_STOP_GRACE_S = 30.0


class DevError(RuntimeError):
    """The stack cannot start: said in one line, no traceback."""


class Layout:
    """Where one stack keeps what must outlive it."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.nats = self.root / "nats"
        self.pg = self.root / "pg"
        self.logs = self.root / "logs"
        self.ports = self.root / "ports.json"
        self.key = self.root / "gemini.key"
        self.lock = self.root / "dev.lock"

    def clear(self) -> None:
        """Remove every kept thing (`--fresh`) but the lock this run holds."""
        for path in (self.nats, self.pg, self.logs):
            shutil.rmtree(path, ignore_errors=True)
        for path in (self.ports, self.key):
            path.unlink(missing_ok=True)


@contextlib.contextmanager
def locked(layout: Layout) -> Iterator[None]:
    """One stack per directory: a second would find PostgreSQL's data in use."""
    layout.root.mkdir(parents=True, exist_ok=True)
    with layout.lock.open("a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            raise DevError(f"a stack is already running in {layout.root} "
                           f"(pid {f.read().strip() or '?'})") from None
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        yield


def _free(port: int) -> bool:
    with socket.socket() as s:
        # As the servers bind: a port our last run left in TIME_WAIT is free to them.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def ports(layout: Layout) -> dict[str, int]:
    """The ports of the last run where still free, new ones where not; saved."""
    saved: dict[str, int] = {}
    with contextlib.suppress(OSError, ValueError):
        saved = {k: int(v) for k, v in json.loads(layout.ports.read_text()).items()}
    chosen = {name: saved[name] if saved.get(name) and _free(saved[name])
              else _proc.free_port() for name in PORTS}
    layout.ports.write_text(json.dumps(chosen, indent=2) + "\n")
    return chosen


def pod_env(settings: Settings, *, nats_url: str, database_url: str, http_port: int,
            emulator_url: str | None, key_file: Path) -> dict[str, str]:
    """The roles' environment: the caller's, pointed at this stack's servers."""
    env = dict(os.environ)
    env |= {"NATS_URL": nats_url, "DATABASE_URL": database_url,
            "BATCHYARD_HTTP_PORT": str(http_port)}
    if emulator_url is None:
        env.pop("GEMINI_BASE_URL", None)  # an export left over from an emulator run
    else:
        # The caller's own key never goes to the emulator.
        env.pop("GEMINI_API_KEY", None)
        env |= {"GEMINI_BASE_URL": emulator_url, "GEMINI_API_KEY_FILE": str(key_file)}
        for name, value in _EMULATOR_PACE.items():
            env.setdefault(name, value)
    for name in ("NATS_CREDS", "NATS_USER", "NATS_PASSWORD", "NATS_PASSWORD_FILE",
                 "NATS_TLS_CA"):
        env.pop(name, None)  # this nats-server has no auth and no TLS
    return env


def exports(env: dict[str, str], real: bool) -> list[str]:
    lines = [f"export {k}={shlex.quote(env[k])}" for k in ("NATS_URL", "DATABASE_URL")]
    lines.append("unset GEMINI_BASE_URL" if real
                 else f"export GEMINI_BASE_URL={shlex.quote(env['GEMINI_BASE_URL'])}")
    return lines


def status_line(data: dict[str, Any], embedded: int) -> str:
    """One line of what the stack holds now."""
    batches = ", ".join(f"{n} {s}" for s, n in sorted(data["batches"].items())) or "none"
    pending = {c["consumer"]: c.get("pending", 0) for c in data["consumers"]}
    return (f"batches: {batches} | embeddings {embedded} | parked {data['parked']} | "
            f"dead {data['dead']} | pending submit {pending.get('submit', 0)} "
            f"poll {pending.get('poll', 0)} | key {data['key'].get('state', 'unknown')}")


class Screen:
    """The live status line: rewritten in place on a terminal, one line per change elsewhere."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.tty = out.isatty()
        self.last = ""

    def show(self, line: str) -> None:
        if line == self.last:
            return
        self.last = line
        if self.tty:
            self.out.write(f"\r\x1b[K{time.strftime('%H:%M:%S')}  {line}")
        else:
            self.out.write(f"status: {line}\n")
        self.out.flush()

    def say(self, text: str) -> None:
        """A line above the status line, which then stays the last one."""
        if self.tty and self.last:
            self.out.write("\r\x1b[K")
        self.out.write(text + "\n")
        if self.tty and self.last:
            self.out.write(f"{time.strftime('%H:%M:%S')}  {self.last}")
        self.out.flush()

    def end(self) -> None:
        """Leave the status line as it stands; what follows goes below it."""
        if self.tty and self.last:
            self.out.write("\n")
            self.out.flush()
        self.last = ""


async def run_dev(settings: Settings, args: argparse.Namespace) -> int:
    """Start the stack, stay up until SIGINT or SIGTERM, stop everything; exit 0."""
    if args.real and not (settings.gemini_api_key or settings.gemini_api_key_file):
        print("batchyard: --real needs GEMINI_API_KEY (or GEMINI_API_KEY_FILE)",
              file=sys.stderr)
        return 2
    layout = Layout(args.dir)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    starting = True

    def on_signal() -> None:
        # During start-up there is nothing to wait for: abandon it, the exit stack unwinds.
        if starting and main is not None:
            main.cancel()
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    screen = Screen(sys.stdout)
    try:
        with locked(layout):
            if args.fresh:
                layout.clear()
            async with contextlib.AsyncExitStack() as stack:
                pod, app = await _start(settings, args, layout, stack, screen)
                starting = False
                code = await _watch(app, pod, stop, screen, layout)
                screen.end()
                screen.say("stopping …")
            screen.say(f"stopped; the data stays in {layout.root} (--fresh starts clean)")
            return code
    except asyncio.CancelledError:
        if not stop.is_set():
            raise
        screen.say("stopped during start-up")
        return 0
    except (DevError, RuntimeError) as exc:
        print(f"batchyard: {exc}", file=sys.stderr)
        return 1
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


async def _start(settings: Settings, args: argparse.Namespace, layout: Layout,
                 stack: contextlib.AsyncExitStack, screen: Screen,
                 ) -> tuple[asyncio.subprocess.Process, App]:
    for path in (layout.nats, layout.pg, layout.logs):
        path.mkdir(exist_ok=True)
    port = ports(layout)
    pg = PostgresServer(layout.pg, port=port["postgres"])
    kept = "kept" if pg.initialized else "new"
    screen.say(f"batchyard dev: starting in {layout.root} ({kept} data)")

    natsd = NatsServer(layout.nats, port=port["nats"])
    await natsd.start()
    stack.push_async_callback(natsd.stop)
    if not pg.initialized:
        shutil.rmtree(pg.data, ignore_errors=True)  # an initdb interrupted last time
        await pg.init()
    await pg.start()
    stack.push_async_callback(pg.stop)
    emulator_url: str | None = None
    emulator_pid = 0
    if not args.real:
        emu = await stack.enter_async_context(
            launch_emulator(keys=(DEV_KEY,), port=port["emulator"]))
        emulator_url, emulator_pid = emu.url, emu.process.pid
        layout.key.write_text(DEV_KEY)

    await _prepare(natsd.url, pg.url)

    env = pod_env(settings, nats_url=natsd.url, database_url=pg.url, http_port=port["http"],
                  emulator_url=emulator_url, key_file=layout.key)
    log_path = layout.logs / "pods.log"
    with log_path.open("ab") as log:
        offset = log.tell()
        pod = await _proc.spawn([sys.executable, "-m", "consumers", "run", "all"], env=env,
                                stdout=log.fileno(), stderr=log.fileno())
    stack.push_async_callback(_proc.stop, pod, signal.SIGTERM, _STOP_GRACE_S)
    await _until_started(pod, log_path, offset)
    app = await App.open(settings.with_(
        nats_url=natsd.url, database_url=pg.url, nats_creds=None, nats_user=None,
        nats_password=None, nats_password_file=None, nats_tls_ca=None,
        gemini_base_url=emulator_url, concurrency=1), name="batchyard-dev")
    stack.push_async_callback(app.close)

    screen.say(_banner(natsd, pg, layout, emulator_url, emulator_pid, pod, port, log_path,
                       exports(env, args.real)))
    return pod, app


async def _prepare(nats_url: str, database_url: str) -> None:
    """Streams and migrations, applied as every start does (both idempotent)."""
    nc = await nats.connect(nats_url)
    try:
        await provision.apply(nc.jetstream())
    finally:
        await nc.close()
    db = await asyncpg.connect(database_url)
    try:
        await Migrator(db).up()
    finally:
        await db.close()


def _banner(natsd: NatsServer, pg: PostgresServer, layout: Layout, emulator_url: str | None,
            emulator_pid: int, pod: asyncio.subprocess.Process, port: dict[str, int],
            log_path: Path, exported: list[str]) -> str:
    """What runs where, and what to type in another shell."""
    pids = (natsd.proc.pid if natsd.proc else 0, pg.proc.pid if pg.proc else 0)
    return "\n".join([
        f"  nats-server  {natsd.url}  (pid {pids[0]}, data in {layout.nats})",
        f"  PostgreSQL   {pg.url}  (pid {pids[1]}, data in {layout.pg})",
        f"  emulator     {emulator_url}  (pid {emulator_pid}, state in memory only)"
        if emulator_url else "  Gemini       the real API (GEMINI_API_KEY)",
        f"  roles        submit, poll, key-health, recovery  (pid {pod.pid}, "
        f"http://127.0.0.1:{port['http']}/metrics, log {log_path})",
        "",
        "In another shell:",
        *(f"  {line}" for line in _activate()),
        *(f"  {line}" for line in exported),
        "  batchyard publish FILE.jsonl --batch-id ID",
        "  batchyard status",
        "  nats stream view BATCH",
        "",
        "ready; Ctrl-C stops the stack (the data stays)",
    ])


def _activate() -> list[str]:
    """How another shell finds `batchyard`, when its PATH does not."""
    script = Path(sys.prefix) / "bin" / "activate"
    if shutil.which("batchyard") or not script.exists():
        return []
    return [f"source {shlex.quote(str(script))}"]


async def _until_started(pod: asyncio.subprocess.Process, log: Path, offset: int,
                         timeout: float = 60.0) -> None:
    """Wait for the roles' `pod.started` (every consumer bound)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_bytes()[offset:]
        if b'"pod.started"' in text:
            return
        if pod.returncode is not None:
            tail = text[-2000:].decode(errors="replace")
            raise DevError(f"the roles exited with {pod.returncode} ({log}):\n{tail}")
        await asyncio.sleep(0.1)
    raise DevError(f"the roles did not start within {timeout:.0f} s; see {log}")


async def _watch(app: App, pod: asyncio.subprocess.Process, stop: asyncio.Event,
                 screen: Screen, layout: Layout) -> int:
    """Refresh the status line until asked to stop; 1 when the roles died first."""
    while not stop.is_set():
        if pod.returncode is not None:
            screen.end()
            screen.say(f"the roles exited with {pod.returncode}; see "
                       f"{layout.logs / 'pods.log'}")
            return 1
        try:
            data = await status(app)
            screen.show(status_line(data, await app.store.reports.embedded()))
        except Exception as exc:  # a status read failing is shown, never fatal
            screen.show(f"status unavailable: {type(exc).__name__}: {exc}")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)
    return 0
