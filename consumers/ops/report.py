"""Operator commands: status, batches, parked and dead letters (rich tables or --json)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

import msgspec
from nats.js.errors import NotFoundError
from rich.console import Console
from rich.table import Table

from consumers import costs
from consumers.app import App
from consumers.ops import replay
from events import jetstream as defs
from events import subjects
from events.payloads import AuthFailed, Dead, InvalidMessage, SubmitRequest, decode, encode
from events.publisher import publish

console = Console()


def emit(data: Any, as_json: bool, title: str, columns: Sequence[str] | None = None) -> None:
    """Print `data` (a dict or a list of dicts) as JSON or as a table."""
    if as_json:
        print(json.dumps(data, default=str, indent=2))
        return
    rows = data if isinstance(data, list) else [data]
    cols = list(columns or (rows[0].keys() if rows else []))
    table = Table(title=title)
    for c in cols:
        table.add_column(c)
    for r in rows:
        table.add_row(*("" if r.get(c) is None else str(r.get(c)) for c in cols))
    console.print(table)


async def status(app: App) -> dict[str, Any]:
    """Batches by status, parked and dead counts, consumer lag, key health."""
    counts = await app.store.reports.statuses()
    parked = await app.js.stream_info(defs.BATCH_PARKED)
    dead = await app.js.stream_info(defs.BATCH, subjects_filter=subjects.DEAD)
    consumers = []
    for c in defs.CONSUMERS:
        try:
            info = await app.js.consumer_info(c.stream, c.name)
        except NotFoundError:
            consumers.append({"consumer": c.name, "stream": c.stream, "missing": True})
            continue
        consumers.append({"consumer": c.name, "stream": c.stream, "pending": info.num_pending,
                          "ack_pending": info.num_ack_pending,
                          "redelivered": info.num_redelivered})
    health, _ = await app.guard.read()
    gate, _ = await app.quota.read()
    active = await app.store.reports.active()
    waiting = await app.store.reports.waiting()
    s = app.settings
    return {
        "quota": {"gate": msgspec.to_builtins(gate) if gate else {"state": "open"},
                  "active_jobs": active["jobs"], "max_active_jobs": s.max_active_jobs,
                  "active_packs": active["packs"], "packs_filling": active["packs_filling"],
                  "enqueued_tokens": active["tokens"],
                  "max_enqueued_tokens": s.max_enqueued_tokens or None,
                  "batches_waiting": waiting,
                  "requests_done": active["requests_done"], "requests": active["requests"]},
        "batches": counts,
        "parked": parked.state.messages,
        "dead": (dead.state.subjects or {}).get(subjects.DEAD, 0),
        "consumers": consumers,
        "key": msgspec.to_builtins(health) if health else {"state": "unknown"},
        "cost": await costs.totals(app),
    }


def print_status(data: dict[str, Any]) -> None:
    emit([{"status": k, "batches": v} for k, v in data["batches"].items()] or
         [{"status": "(none)", "batches": 0}], False, "batches")
    console.print(f"parked: {data['parked']}   dead letters: {data['dead']}")
    emit(data["consumers"], False, "consumers",
         ["consumer", "stream", "pending", "ack_pending", "redelivered"])
    emit(data["key"], False, "key health", ["fingerprint", "state", "reason", "checked_at"])
    q = data["quota"]
    emit({**q["gate"], "active_jobs": f"{q['active_jobs']} / {q['max_active_jobs']}"
          f" ({q['active_packs']} packs, {q['packs_filling']} filling)",
          "enqueued_tokens": f"{q['enqueued_tokens']} / {q['max_enqueued_tokens'] or 'no limit'}",
          "waiting": q["batches_waiting"],
          "progress": f"{q['requests_done']} / {q['requests']} requests"}, False,
         "Batch API quota", ["state", "until", "reason", "active_jobs", "enqueued_tokens",
                             "waiting", "progress"])
    console.print(costs.summary(data["cost"]))


async def batches(app: App, state: str | None, limit: int) -> list[dict[str, Any]]:
    return await app.store.reports.batches(state, limit)


async def batch(app: App, batch_id: str) -> dict[str, Any] | None:
    row = await app.store.get(batch_id)
    if row is None:
        return None
    out = dict(row)
    out["embeddings_stored"] = await app.store.reports.embedded(batch_id)
    out["jobs"] = [
        {**{k: r[k] for k in ("attempt", "shard", "state", "job_name", "items", "est_tokens",
                              "input_file", "requests_succeeded", "requests_failed",
                              "polled_at")}, "progress": _progress(r)}
        for r in await app.store.reports.jobs_of(batch_id)]
    # A batch whose attempt went in a pack (CONTRACT §12): the pack and its job.
    out["packs"] = [dict(r) for r in await app.store.packs.of_batch(batch_id)]
    out |= await costs.of_batch(app, batch_id, row["model"])
    return out


def _progress(job: Any) -> str | None:
    """"done / items (pct)" of a job a poll has seen running; None before."""
    if job["polled_at"] is None or job["state"] not in ("pending", "running"):
        return None
    done = (job["requests_succeeded"] or 0) + (job["requests_failed"] or 0)
    return f"{done} / {job['items']} ({100 * done // max(job['items'], 1)}%)"


async def _stream(app: App, stream: str, subject: str | None = None,
                  ) -> AsyncIterator[tuple[int, bytes]]:
    info = await app.js.stream_info(stream)
    seq = info.state.first_seq
    while seq and seq <= info.state.last_seq:
        try:
            raw = await app.js.get_msg(stream, seq, subject=subject, next=subject is not None)
        except NotFoundError:
            if subject is not None:
                return
            seq += 1
            continue
        yield int(raw.seq or seq), raw.data or b""
        seq = int(raw.seq or seq) + 1


async def parked(app: App) -> list[dict[str, Any]]:
    out = []
    async for seq, data in _stream(app, defs.BATCH_PARKED):
        try:
            p = decode(data, AuthFailed)
        except InvalidMessage as exc:
            out.append({"seq": seq, "error": exc.reason})
            continue
        out.append({"seq": seq, "batch_id": p.batch_id or p.pack, "stage": p.stage,
                    "key_fingerprint": p.key_fingerprint,
                    "error": f"{p.error.code} {p.error.status}: {p.error.message}",
                    "failed_at": p.failed_at})
    return out


async def dead(app: App) -> list[dict[str, Any]]:
    out = []
    async for seq, data in _stream(app, defs.BATCH, subjects.DEAD):
        try:
            d = decode(data, Dead)
        except InvalidMessage as exc:
            out.append({"seq": seq, "reason": "unreadable", "error": exc.reason})
            continue
        out.append({"seq": seq, "batch_id": d.batch_id, "stage": d.stage, "reason": d.reason,
                    "error": d.error.message if d.error else None,
                    "items": len(d.items) if d.items else None, "dead_at": d.dead_at})
    return out


async def replay_parked(app: App, batch_id: str | None) -> int:
    return await replay.replay_by_hand(app, batch_id)


async def replay_dead(app: App, seq: int) -> str:
    """Publish a dead letter's batch again as the batch's next attempt."""
    try:
        raw = await app.js.get_msg(defs.BATCH, seq)
    except NotFoundError:
        return f"no message {seq} in {defs.BATCH}"
    if raw.subject != subjects.DEAD:
        return f"message {seq} is on {raw.subject}, not {subjects.DEAD}"
    d = decode(raw.data or b"", Dead)
    try:
        req = msgspec.convert(d.payload, SubmitRequest)
    except (msgspec.ValidationError, TypeError, ValueError):
        return (f"dead letter {seq} ({d.reason}) holds no batch.submit that can be replayed: "
                f"{d.error.message if d.error else ''}; fix the input and publish it anew")
    # Item letters already carry the next attempt; a whole-message letter is its attempt's.
    items_letter = d.reason in ("item_attempts_exhausted", "job_failed")
    attempt = req.attempt if items_letter else req.attempt + 1
    row = await app.store.get(req.batch_id)
    if row is not None and int(row["attempt"]) >= attempt:
        return (f"already replayed: batch {req.batch_id} is at attempt {row['attempt']} "
                f"({row['status']})")
    again = msgspec.structs.replace(req, attempt=attempt)
    ack = await publish(app.js, subjects.SUBMIT, encode(again),
                        subjects.submit_id(req.batch_id, attempt))
    what = "already replayed" if ack.duplicate else "replayed"
    return f"{what}: batch {req.batch_id} as attempt {attempt} ({len(req.items or [])} items)"


async def report_markdown(app: App) -> str:
    """A run summary: counts by status, failures by reason, retries, the slowest batches."""
    tables = await app.store.reports.run_summary()
    counts, attempts, paths, slow = (tables[k] for k in ("counts", "attempts", "paths", "slow"))
    reasons: dict[tuple[str, str], int] = {}
    for d in await dead(app):
        key = (str(d.get("reason")), str(d.get("stage", "")))
        reasons[key] = reasons.get(key, 0) + 1
    lines = ["# batchyard run report", "", "## Batches by status", "",
             "| status | batches | items | embedded | failed |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {r['status']} | {r['n']} | {r['items'] or 0} | {r['embedded'] or 0} | "
              f"{r['failed'] or 0} |" for r in counts]
    lines += ["", "## Failures by reason", "", "| reason | stage | dead letters |",
              "|---|---|---:|"]
    lines += [f"| {reason} | {stage} | {n} |" for (reason, stage), n in sorted(reasons.items())]
    lines += ["", "## Retries", "", "| attempts used | batches |", "|---:|---:|"]
    lines += [f"| {r['attempt'] + 1} | {r['n']} |" for r in attempts]
    lines += ["", "| embed path | batches | jobs failed whole |", "|---|---:|---:|"]
    lines += [f"| {r['path']} | {r['n']} | {r['job_failures'] or 0} |" for r in paths]
    lines += ["", "## Slowest batches", "", "| batch | status | items | attempts | took |",
              "|---|---|---:|---:|---|"]
    lines += [f"| {r['batch_id']} | {r['status']} | {r['items_total']} | {r['attempt'] + 1} | "
              f"{r['took']} |" for r in slow]
    lines += costs.markdown(await costs.totals(app))
    return "\n".join(lines) + "\n"
