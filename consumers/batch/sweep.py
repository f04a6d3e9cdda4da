"""Input files whose job is over, left behind by a crash or a failed delete.

File storage is finite (20 GB a project), so every input file goes once its job is
terminal. The poll role deletes it then; this sweep catches what a crash or an error
left. Only files named like our jobs (`<batch_id>:<attempt>[#<k>]`, `pack:<pack_id>`)
are candidates, and of those only files whose job can no longer need them: nothing else
is deleted.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any, NamedTuple

import structlog

from consumers import metrics
from consumers.app import App
from consumers.batch import kept
from consumers.errors import AuthError, PermanentError, RetryableError
from consumers.gemini.client import TRANSFER_TIMEOUT
from consumers.gemini.jobs import TERMINAL, Job
from consumers.status import FINISHED, LIVE

log = structlog.get_logger("batchyard.sweep")
_NAME = re.compile(
    r"(?P<batch>[A-Za-z0-9._:-]{1,128}):(?P<attempt>\d{1,9})(?:#(?P<shard>\d{1,9}))?")
class Candidate(NamedTuple):
    name: str
    batch_id: str
    attempt: int
    shard: int


def candidate(name: str, display_name: str) -> Candidate | None:
    m = _NAME.fullmatch(display_name)
    if m is None:
        return None
    return Candidate(name, m["batch"], int(m["attempt"]), int(m["shard"] or 0))


_PACK = re.compile(r"pack:(?P<pack>pk[0-9a-f]{32})")


def pack_orphaned(name: str, pack: Any) -> bool:
    """Whether a pack's input file can no longer be needed: its pack is gone or over, or
    its job reads another file (an upload whose creation a stopped sealer never made)."""
    if pack is None:
        return True
    if pack["state"] in ("open", "creating"):
        return False  # a creation may be under way with it
    return pack["state"] in TERMINAL or pack["input_file"] != name


def orphaned(job_state: str | None, batch_status: str | None, batch_attempt: int | None,
             attempt: int) -> bool:
    """Whether a file of (batch, attempt) can no longer be needed by its job."""
    if job_state is not None:
        return job_state in TERMINAL
    # No job row: its creation was given up. The file is dead once the batch is gone,
    # finished, or on a later attempt; until then a resumed creation may still use it.
    return batch_status is None or batch_status in FINISHED or (batch_attempt or 0) > attempt


async def sweep_files(app: App) -> int:
    """Delete the input files of finished jobs; returns how many were deleted."""
    listing = await app.gemini.list_files()
    found = [c for name, display in listing if (c := candidate(name, display)) is not None]
    packed = {name: m["pack"] for name, display in listing
              if (m := _PACK.fullmatch(display)) is not None}
    dead: list[str] = []
    if found:
        states = await app.store.jobs.file_states(
            [c.name for c in found], [c.batch_id for c in found],
            [c.attempt for c in found], [c.shard for c in found])
        dead += [r["name"] for r in states
                 if orphaned(r["state"], r["status"], r["batch_attempt"], r["attempt"])]
    if packed:
        packs = await app.store.packs.files(list(set(packed.values())))
        dead += [name for name, pack_id in packed.items()
                 if pack_orphaned(name, packs.get(pack_id))]
    deleted = 0
    for name in dead:
        try:
            await app.gemini.delete_file(name)
        except (RetryableError, PermanentError) as exc:  # gone already, or next sweep
            log.info("file.sweep_skipped", file=name, error=exc.message)
            continue
        deleted += 1
        metrics.FILES_SWEPT.inc()
        log.info("file.swept", file=name)
    return deleted


RECONCILE_LIMIT = 200  # rows looked up per round: the API calls of one round are bounded
# A creation no lookup finds is given up only after the longest an upload and a create
# can take: until then it may still be under way in a pod.
CREATING_GRACE = TRANSFER_TIMEOUT + 600.0


async def reconcile_jobs(app: App) -> int:
    """Rows still counted as active for longer than a sweep interval although their
    attempt is over, checked with the API: a terminal, deleted (404) or never-created
    job gives its slot back. Returns how many rows changed."""
    stale = await app.store.jobs.stale(
        app.settings.file_sweep_interval, max(CREATING_GRACE, app.settings.file_sweep_interval),
        RECONCILE_LIMIT, LIVE)
    # Rows whose creation has no answer are looked up by name, in one walk of the listing.
    unnamed = {r["display_name"] for r in stale if not r["job_name"]}
    listed = await app.gemini.find_jobs(unnamed) if unnamed else {}
    changed = 0
    for r in stale:
        batch_id, attempt, shard = r["batch_id"], r["attempt"], r["shard"]
        creating = r["state"] == "creating"
        job = await _job_of(app, r["job_name"]) if r["job_name"] else listed.get(r["display_name"])
        if job is None and not creating:
            outcome = "unknown to the API"  # deleted
            await app.quota.finished(batch_id, attempt, "cancelled", shard)
        elif job is None:
            if not r["abandoned"]:
                continue  # its creation may still be under way
            outcome = "never made"
            await app.quota.release(batch_id, attempt, shard)
        else:
            if not creating and not job.done:
                continue
            outcome = job.state
            if creating:
                await app.quota.created(batch_id, attempt, job.name, None, shard=shard)
            if job.done:
                await app.quota.finished(batch_id, attempt, job.state, shard)
        changed += 1
        log.info("job.reconciled", display_name=r["display_name"], outcome=outcome)
    return changed


async def _job_of(app: App, name: str) -> Job | None:
    """The job, or None when the API does not know it (404: deleted)."""
    try:
        return await app.gemini.get_job(name)
    except PermanentError as exc:
        if exc.code != 404:
            raise
        return None


async def forget_file(app: App, file_name: str) -> None:
    """Delete an input file now that its job needs it no more; the sweep retries a failure."""
    try:
        await app.gemini.delete_file(file_name)
    except (RetryableError, PermanentError, AuthError) as exc:
        log.warning("file.delete_failed", file=file_name, error=exc.message)


async def sweep_forever(app: App) -> None:
    """The poll role's periodic sweep, until cancelled; a bad key just skips a round."""
    while True:
        await asyncio.sleep(app.settings.file_sweep_interval)
        for step in (reconcile_jobs, sweep_files, kept.sweep_kept):
            try:
                await step(app)
            except (RetryableError, PermanentError, AuthError) as exc:
                log.warning("sweep.failed", step=step.__name__, error=exc.message)
