"""`batchyard demo`: the whole system on this machine, with a key that expires mid-run.

Throwaway nats-server, PostgreSQL and Gemini emulator; streams and migrations applied;
every role running as its own process; a few hundred batches of code chunks cut from
this repository's files; live progress; a summary that reads the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg
import nats
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from consumers.ops import provision
from consumers.settings import Settings
from consumers.status import FINISHED
from consumers.store.migrate import Migrator
from consumers.store.reports import Reports
from events import jetstream as defs
from events import subjects
from events.payloads import Item, SubmitRequest
from events.publisher import publish
from sandbox.natsd import nats_server
from sandbox.pg import postgres_server

OLD_KEY = "AIzaSyDemoKeyThatWillExpire00000000001"
NEW_KEY = "AIzaSyDemoKeyAfterRotation000000000002"
ROOT = Path(__file__).resolve().parents[1]
console = Console()


def workload(batches: int = 300, dims: int = 768) -> list[SubmitRequest]:
    """Batches of ~40-line chunks cut from this repository's own source and docs."""
    chunks: list[str] = []
    for path in sorted(ROOT.glob("**/*")):
        if path.suffix in (".py", ".md", ".sql") and ".venv" not in path.parts:
            lines = path.read_text(errors="replace").splitlines()
            for start in range(0, len(lines), 40):
                text = "\n".join(lines[start:start + 40]).strip()
                if text:
                    chunks.append(f"# {path.relative_to(ROOT)}:{start + 1}\n{text}"[:8000])
    out, at = [], 0
    for n in range(batches):
        size = 3 + (n * 7919) % 40
        items = [Item(f"demo-{n}-{i}", chunks[(at + i) % len(chunks)]) for i in range(size)]
        at += size
        out.append(SubmitRequest(batch_id=f"demo-{n:04d}", items=items,
                                 output_dimensionality=dims, source="batchyard demo"))
    return out


async def run_demo(settings: Settings) -> int:
    from sandbox.emulator.testing import launch_emulator

    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="batchyard-demo-"))
    pods: list[asyncio.subprocess.Process] = []
    console.print("[bold]batchyard demo[/]: starting nats-server, PostgreSQL and the "
                  "Gemini emulator …")
    async with nats_server() as natsd, postgres_server() as pg, \
            launch_emulator(keys=(OLD_KEY, NEW_KEY), job_pending_s=1, job_running_s=3) as emu:
        nc = await nats.connect(natsd.url)
        db = await asyncpg.connect(pg.url)
        try:
            await provision.apply(nc.jetstream())
            await Migrator(db).up()
            key_file = tmp / "gemini.key"
            key_file.write_text(OLD_KEY)
            env = {**os.environ, "NATS_URL": natsd.url, "DATABASE_URL": pg.url,
                   "GEMINI_API_KEY_FILE": str(key_file), "GEMINI_BASE_URL": emu.url,
                   "BATCHYARD_POLL_INTERVAL": "1s", "BATCHYARD_KEY_CHECK_INTERVAL": "5s",
                   # the emulator's jobs take seconds: a 20 s pack wait would be most of it
                   "BATCHYARD_PACK_WAIT": "2s",
                   "BATCHYARD_HTTP_PORT": "0", "BATCHYARD_LOG_LEVEL": "warning"}
            env.pop("GEMINI_API_KEY", None)
            for roles in (["submit", "poll"], ["submit", "poll"], ["key-health"], ["recovery"]):
                log = (tmp / f"{'-'.join(roles)}-{len(pods)}.log").open("wb")
                pods.append(await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "consumers", "run", *roles, env=env,
                    stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log))
            console.print(f"  nats-server  {natsd.url}\n  PostgreSQL   {pg.url}\n"
                          f"  emulator     {emu.url}\n  pods         {len(pods)} "
                          f"(2 x submit+poll, key-health, recovery); logs in {tmp}")
            batches = workload()
            summary = await _drive(nc, db, emu, key_file, batches)
            _print_summary(summary, time.monotonic() - started, natsd.url, pg.url)
        finally:
            for proc in pods:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
            for proc in pods:
                try:
                    await asyncio.wait_for(proc.wait(), 30)
                except TimeoutError:
                    proc.kill()
            await db.close()
            await nc.close()
    return 0 if summary["batches"].get("succeeded") == len(batches) else 1


async def _drive(nc: Any, db: asyncpg.Connection, emu: Any, key_file: Path,
                 batches: list[SubmitRequest]) -> dict[str, Any]:
    js = nc.jetstream()
    reports = Reports(db)
    total_items = sum(len(b.items or []) for b in batches)
    seen_parked: set[str] = set()
    expired = rotated = False
    with Progress(TextColumn("{task.description:<10}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console) as progress:
        bars = {name: progress.add_task(name, total=len(batches)) for name in
                ("submitted", "polling", "parked", "recovered")}
        embedded_bar = progress.add_task("embedded", total=total_items)
        for n, req in enumerate(batches):
            await publish(js, subjects.SUBMIT, req, subjects.submit_id(req.batch_id, 0))
            progress.update(bars["submitted"], completed=n + 1)
            if n == len(batches) // 3 and not expired:
                await emu.set_key(OLD_KEY, "expired")
                expired = True
                progress.console.print("[yellow]the API key expired[/]")
            if n % 20 == 0:
                await asyncio.sleep(0.05)
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline:
            by = await reports.status_of()
            seen_parked |= {b for b, s in by.items() if s == "auth_failed"}
            parked = (await js.stream_info(defs.BATCH_PARKED)).state.messages
            if expired and not rotated and parked:
                await asyncio.sleep(2)
                key_file.write_text(NEW_KEY)
                await js.publish(subjects.KEY_ROTATED, b"")
                rotated = True
                progress.console.print("[green]key rotated: key.rotated published[/]")
            progress.update(bars["polling"], completed=sum(s == "submitted" for s in by.values()))
            progress.update(bars["parked"], completed=parked, total=max(len(seen_parked), 1))
            progress.update(bars["recovered"], total=max(len(seen_parked), 1), completed=sum(
                by.get(b) in FINISHED for b in seen_parked))
            progress.update(embedded_bar, completed=await reports.embedded())
            if len(by) == len(batches) and all(s in FINISHED for s in by.values()):
                break
            await asyncio.sleep(0.5)
    counts = await reports.statuses()
    state = await emu.state()
    return {"batches": counts, "items": total_items,
            "embedded": await reports.embedded(),
            "parked": len(seen_parked), "jobs": len(state["jobs"]),
            "parked_now": (await js.stream_info(defs.BATCH_PARKED)).state.messages}


def _print_summary(s: dict[str, Any], elapsed: float, nats_url: str, db_url: str) -> None:
    table = Table(title=f"batchyard demo: {elapsed:.0f} s")
    table.add_column("what")
    table.add_column("count", justify="right")
    for status, n in sorted(s["batches"].items()):
        table.add_row(f"batches {status}", str(n))
    for label, key in (("items submitted", "items"), ("embeddings stored", "embedded"),
                       ("batches parked on the expired key", "parked"),
                       ("still parked", "parked_now"), ("Gemini batch jobs created", "jobs")):
        table.add_row(label, str(s[key]))
    console.print(table)
    console.print("Next, against your own stack (NATS_URL and DATABASE_URL set):\n"
                  "  batchyard status\n  batchyard batches list --status succeeded\n"
                  "  batchyard parked list\n  nats stream view BATCH_PARKED\n"
                  "  nats consumer report BATCH")
