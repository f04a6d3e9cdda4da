"""The one check that ends every scenario.

- every item of every accepted batch is in batchyard.embeddings exactly once for its model,
  or it (or its batch) is on `batch.dead` with a reason;
- no Gemini job was created twice for one (batch, attempt, shard) or one pack;
- one batch.completed per batch attempt;
- with a valid key back, BATCH_PARKED is empty and no batch rests in `submitting` or
  `auth_failed` (nor anywhere short of a final status);
- no pod crashed except those killed on purpose, and no pod log holds a key.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import nats

from events import jetstream as defs
from events import subjects
from tests.chaos.env import World

FINAL = ("succeeded", "partial", "failed", "dead", "cancelled")
_DISPLAY = re.compile(r"^(?P<batch>.+):(?P<attempt>\d+)(?:#(?P<shard>\d+))?$")
_PACK = re.compile(r"^pack:(?P<pack>pk[0-9a-f]{32})$")
_any = msgspec.json.Decoder()
MAX_LISTED = 25


@dataclass(frozen=True)
class Letter:
    seq: int
    msg_id: str
    body: Any


async def read_subject(w: World, stream: str, subject: str, expected: int) -> list[Letter]:
    """Every message on `subject` (an ordered read of `expected` messages, bounded in time)."""
    if expected == 0:
        return []
    sub = await w.js.subscribe(subject, stream=stream, ordered_consumer=True)
    out: list[Letter] = []
    try:
        while len(out) < expected:
            try:
                msg = await sub.next_msg(timeout=10)
            except nats.errors.TimeoutError:
                break
            try:
                body = _any.decode(msg.data)
            except (msgspec.DecodeError, UnicodeDecodeError):
                body = None
            out.append(Letter(msg.metadata.sequence.stream,
                              (msg.headers or {}).get("Nats-Msg-Id", ""), body))
    finally:
        await sub.unsubscribe()
    return out


async def dead_letters(w: World) -> list[Letter]:
    info = await w.js.stream_info(defs.BATCH, subjects_filter=subjects.DEAD)
    return await read_subject(w, defs.BATCH, subjects.DEAD,
                              (info.state.subjects or {}).get(subjects.DEAD, 0))


class Violations(list[str]):
    def add(self, what: str, examples: list[Any] | None = None) -> None:
        if examples is None:
            self.append(what)
        elif examples:
            shown = ", ".join(map(str, examples[:5]))
            self.append(f"{what}: {len(examples)} (e.g. {shown})")


async def completions(w: World) -> Violations:
    """One batch.completed per batch attempt, and one for every batch that ended with
    embeddings (succeeded or partial) at its last attempt."""
    v = Violations()
    info = await w.js.stream_info(defs.BATCH, subjects_filter=subjects.COMPLETED)
    seen = Counter((str(c.body.get("batch_id")), int(c.body.get("attempt", 0)))
                   for c in await read_subject(w, defs.BATCH, subjects.COMPLETED,
                                               (info.state.subjects or {}).get(
                                                   subjects.COMPLETED, 0))
                   if isinstance(c.body, dict))
    v.add("batch.completed announced twice for one batch attempt",
          [f"{b}:{a} x{n}" for (b, a), n in seen.items() if n > 1])
    db = await w.db()
    try:
        ended = await db.fetch("SELECT batch_id, attempt FROM batchyard.batches"
                               " WHERE status IN ('succeeded', 'partial')")
    finally:
        await db.close()
    v.add("batches ended with embeddings but no batch.completed for their attempt",
          [f"{r['batch_id']}:{r['attempt']}" for r in ended
           if (r["batch_id"], r["attempt"]) not in seen])
    return v


async def check_data(w: World, letters: list[Letter]) -> Violations:
    """Items, jobs, parked messages and batch rows."""
    v = Violations()
    db = await w.db()
    try:
        rows = await db.fetch("SELECT item_id, model, batch_id FROM batchyard.embeddings")
        batches = {r["batch_id"]: r["status"] for r in await db.fetch(
            "SELECT batch_id, status FROM batchyard.batches")}
        active = await db.fetch("SELECT batch_id, attempt, shard, state FROM batchyard.jobs"
                                " WHERE state IN ('creating', 'pending', 'running')")
        packs = await db.fetch("SELECT pack_id, state FROM batchyard.packs"
                               " WHERE state IN ('open', 'creating', 'pending', 'running')")
    finally:
        await db.close()
    embedded = Counter((r["item_id"], r["model"]) for r in rows)
    v.add("items embedded more than once for one model",
          [k for k, n in embedded.items() if n > 1])

    dead_items: set[tuple[str, str]] = set()
    dead_batches: set[str] = set()
    for letter in letters:
        body = letter.body if isinstance(letter.body, dict) else {}
        if not body.get("reason"):
            v.add(f"dead letter {letter.seq} has no reason")
            continue
        bid = body.get("batch_id")
        items = body.get("items")
        if isinstance(items, list):
            dead_items.update((str(bid), str(i.get("id"))) for i in items if isinstance(i, dict))
        elif bid:
            dead_batches.add(str(bid))

    expected: set[tuple[str, str]] = set()
    missing: list[str] = []
    both: list[str] = []
    not_final: list[str] = []
    for a in w.ledger.accepted.values():
        if a.batch_id not in batches:
            if a.batch_id not in dead_batches:
                missing.append(f"{a.batch_id} (no batch row, no dead letter)")
            continue
        if batches[a.batch_id] not in FINAL:
            not_final.append(f"{a.batch_id}={batches[a.batch_id]}")
        if a.whole_batch_dead and a.batch_id not in dead_batches:
            missing.append(f"{a.batch_id} (no dead letter for the batch)")
        for item in a.items:
            expected.add((item, a.model))
            is_embedded = (item, a.model) in embedded
            is_dead = (a.batch_id, item) in dead_items or a.batch_id in dead_batches
            if not is_embedded and not is_dead:
                missing.append(f"{a.batch_id}/{item}@{a.model}")
            elif is_embedded and (a.batch_id, item) in dead_items:
                both.append(f"{a.batch_id}/{item}@{a.model}")
    v.add("items neither embedded nor dead-lettered", missing)
    v.add("items both embedded and dead-lettered as failed", both)
    v.add("batches not in a final status", not_final)
    v.add("embeddings of items no accepted batch holds",
          [f"{k[0]}@{k[1]}" for k in embedded if k not in expected])

    state = await w.emulator.state()
    per_attempt: Counter[tuple[str, int, int]] = Counter()
    per_pack: Counter[str] = Counter()
    for job in state["jobs"]:
        if p := _PACK.match(job.get("display_name") or ""):
            per_pack[p["pack"]] += 1
            continue
        m = _DISPLAY.match(job.get("display_name") or "")
        if m is None:
            v.add(f"a Gemini job with an unexpected display_name {job.get('display_name')!r}")
            continue
        per_attempt[(m["batch"], int(m["attempt"]), int(m["shard"] or 0))] += 1
    v.add("Gemini jobs created twice for one (batch, attempt, shard)",
          [f"{b}:{a}#{s} x{n}" for (b, a, s), n in per_attempt.items() if n > 1])
    v.add("Gemini jobs created twice for one pack",
          [f"{p} x{n}" for p, n in per_pack.items() if n > 1])
    w.figures["gemini_jobs"] = len(state["jobs"])
    w.figures["pack_jobs"] = sum(per_pack.values())

    parked = (await w.js.stream_info(defs.BATCH_PARKED)).state.messages
    if parked:
        v.add(f"BATCH_PARKED still holds {parked} messages with a valid key back")
    resting = [f"{b}={s}" for b, s in batches.items() if s in ("submitting", "auth_failed")]
    v.add("batches resting in submitting or auth_failed", resting)
    v.add("jobs rows still counted as active (an admission slot never given back)",
          [f"{r['batch_id']}:{r['attempt']}#{r['shard']}={r['state']}" for r in active])
    v.add("packs still open or counted as active", [f"{r['pack_id']}={r['state']}" for r in packs])
    held, bound = w.figures.get("batch_submit_messages"), w.figures.get("batch_submit_bound")
    if held is not None and bound is not None and held > bound:
        v.add(f"BATCH holds {held} batch.submit messages while waiting (bound {bound})")
    return v


async def check_pods(w: World) -> Violations:
    """Every pod not killed on purpose is alive and stops with exit 0; no log holds a key."""
    v = Violations()
    crashed: list[str] = []
    peaks = {pod.log.name: _peak_rss_mib(pod.proc.pid) for pod in w.live_pods()}
    w.figures["peak_rss_mib"] = max(peaks.values(), default=0)
    v.add(f"pods whose peak RSS passed {PEAK_RSS_MIB} MiB",
          [f"{name}: {mib} MiB" for name, mib in peaks.items() if mib > PEAK_RSS_MIB])
    for pod in w.stack.pods:
        if pod.proc.pid in w.killed:
            continue
        if pod.proc.returncode is not None:
            crashed.append(f"{pod.log.name} exited {pod.proc.returncode}: "
                           f"{_tail(pod.text())}")
            continue
        try:
            code = await pod.terminate(60)
        except TimeoutError:
            await pod.kill()
            crashed.append(f"{pod.log.name} did not stop within 60 s of SIGTERM")
            continue
        if code != 0:
            crashed.append(f"{pod.log.name} exited {code} on SIGTERM: {_tail(pod.text())}")
    v.add("pods that crashed", crashed)
    leaked = [f"{pod.log.name} holds key …{key[-6:]}" for pod in w.stack.pods
              for key in w.keys if key in pod.text()]
    v.add("pod logs that hold a key", leaked)
    w.figures["handler_crashes"] = sum(p.text().count('"handler.crashed"')
                                       for p in w.stack.pods)
    return v


PEAK_RSS_MIB = 400  # a pod of every role at the chaos suite's batch sizes stays well under


def _peak_rss_mib(pid: int) -> int:
    """VmHWM of a live process: its peak resident set, in MiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) // 1024
    except OSError:
        pass
    return 0


def _tail(text: str) -> str:
    return " | ".join(text.strip().splitlines()[-3:])[-600:]
