"""The Batch API's limits as waits (CONTRACT §11): admission across pods and the gate.

Admission is counted in PostgreSQL's `jobs` table (consumers/store/jobs.py). The gate
is KV `QUOTA` / `batch-create`: a 429 on creation closes it for every pod until the
RetryInfo delay, or a cooldown that doubles per consecutive 429; a job that finishes
opens it early.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import msgspec
import structlog
from nats.js.kv import KeyValue

from consumers import metrics
from consumers.errors import BatchyardError
from consumers.gemini.jobs import Job
from consumers.kvdoc import KvDoc
from consumers.settings import Settings
from consumers.store.batches import Store
from events import jetstream as defs
from events.payloads import ErrorDetail, QuotaGate

log = structlog.get_logger("batchyard.quota")
GATE_CACHE_S = 1.0
PROBING = "cooldown over: one pod probes with a creation"


def _now() -> datetime:
    return datetime.now(UTC)


class Quota:
    def __init__(self, store: Store, kv: KeyValue, settings: Settings):
        self.store = store
        self.doc = KvDoc(kv, defs.QUOTA_BATCH_CREATE, QuotaGate)
        self.settings = settings
        self._gate: tuple[float, QuotaGate | None] = (0.0, None)
        self.paused_until = 0.0  # this pod holds off fetching after a hold
        # After a hold for want of room: what was active then, until when this pod waits
        # for it to shrink (a job finishing), and when it last looked.
        self._full: tuple[tuple[int, int], float] | None = None
        self._full_checked = 0.0
        # Until then this pod fetches one message at a time: room comes back a slot at a
        # time, and a fetch of many would put all but one back as held copies.
        self.careful_until = 0.0

    async def reserve(self, batch_id: str, attempt: int, display_name: str, items: int,
                      est_tokens: int, model: str, shard: int = 0) -> str | None:
        """Take a slot for this attempt's job: "new", "again" when an earlier try holds
        it (its creation may have made the job), None when the Batch API has no room."""
        return await self.store.jobs.reserve(
            batch_id, attempt, shard, display_name, items, est_tokens, model,
            self.settings.max_active_jobs, self.settings.max_enqueued_tokens)

    async def created(self, batch_id: str, attempt: int, job_name: str,
                      input_file: str | None, shard: int = 0) -> None:
        await self.store.jobs.created(batch_id, attempt, shard, job_name, input_file)

    async def progress(self, batch_id: str, attempt: int, job: Job, shard: int = 0) -> None:
        """Record a live job's state and counts as its poll saw them; the requests done
        since the last poll go to the progress counter (the row keeps the pods agreed)."""
        counts = job.progress
        gained = await self.store.jobs.progress(
            batch_id, attempt, shard, job.state, counts.succeeded if counts else None,
            counts.failed if counts else None)
        if gained:
            metrics.JOB_REQUESTS_DONE.inc(gained)

    async def release(self, batch_id: str, attempt: int, shard: int = 0) -> None:
        """Give back a slot whose job was never created."""
        await self.store.jobs.release(batch_id, attempt, shard)

    async def finished(self, batch_id: str, attempt: int, state: str, shard: int = 0,
                       failures: dict[str, ErrorDetail] | None = None) -> None:
        """The job is terminal: free its slot, and open the gate early.

        A shard's failed items are kept with it until its whole attempt is settled.
        """
        await self.store.jobs.finished(
            batch_id, attempt, shard, state,
            msgspec.json.encode(failures).decode() if failures else None)
        await self._job_ended()

    async def pack_finished(self, pack_id: str, state: str) -> None:
        """A pack's job is terminal: its one slot comes back (CONTRACT §12)."""
        await self.store.packs.finished(pack_id, state)
        await self._job_ended()

    async def _job_ended(self) -> None:
        await self.store.packs.wake()
        gate, revision = await self.read()
        if gate is not None and gate.state == "closed":
            opened = QuotaGate(state="open", reason="a job finished", checked_at=_now(),
                               strikes=gate.strikes)
            await self._write(opened, revision)

    async def read(self) -> tuple[QuotaGate | None, int]:
        return await self.doc.read()

    async def _write(self, gate: QuotaGate, revision: int) -> bool:
        if not await self.doc.write(gate, revision):
            return False
        self._gate = (time.monotonic(), gate)
        return True

    def _cooldown(self, strikes: int) -> float:
        return min(self.settings.quota_cooldown * 2 ** max(strikes - 1, 0),
                   self.settings.quota_cooldown_max)

    async def may_create(self) -> bool:
        """Whether this pod may call batch create now.

        While the gate is closed, no. Once its time has passed, one pod wins a
        compare-and-set to probe with a single creation (the gate stays closed for the
        others meanwhile), so a full API sees a few calls per cooldown, not a stampede.
        """
        gate, revision = await self.read()
        if gate is None or gate.state == "open":
            return True
        if gate.until is not None and gate.until > _now():
            return False
        probe = QuotaGate(state="closed", reason=PROBING, checked_at=_now(),
                          until=_now() + timedelta(seconds=self._cooldown(gate.strikes)),
                          strikes=gate.strikes)
        return await self._write(probe, revision)

    async def close(self, retry_delay: float | None, reason: str) -> QuotaGate:
        """A 429 on creation: close the gate for every pod."""
        closed = QuotaGate(state="closed", reason=reason)
        for _ in range(5):
            gate, revision = await self.read()
            if (gate is not None and gate.state == "closed" and gate.reason != PROBING
                    and gate.until and gate.until > _now()):
                return gate  # another pod's 429 closed it already
            strikes = (gate.strikes if gate else 0) + 1
            wait = retry_delay if retry_delay is not None else self._cooldown(strikes)
            closed = QuotaGate(state="closed", until=_now() + timedelta(seconds=wait),
                               reason=reason, checked_at=_now(), strikes=strikes)
            if await self._write(closed, revision):
                metrics.GATE_CLOSED.inc()
                log.warning("quota.gate_closed", wait_s=round(wait, 2), strikes=strikes)
                return closed
        return closed

    async def succeeded(self) -> None:
        """A creation went through: the cooldown starts again from its base."""
        gate, revision = await self.read()
        if gate is not None and (gate.strikes or gate.state == "closed"):
            await self._write(QuotaGate(state="open", reason="created", checked_at=_now()),
                              revision)

    async def _active(self) -> tuple[int, int]:
        return await self.store.jobs.active()

    async def full(self) -> None:
        """Admission had no room: fetch nothing until a job finishes (what is active
        shrinks) or the cooldown passes, so a long wait puts back a handful of copies."""
        try:
            active = await self._active()
        except BatchyardError:
            active = (0, 0)  # nothing to compare with: the cooldown alone ends the wait
        self._full = (active, time.monotonic() + self.settings.quota_cooldown)
        self._full_checked = time.monotonic()
        self.careful_until = time.monotonic() + 2 * self.settings.quota_cooldown

    async def _room_wait(self) -> float:
        if self._full is None:
            return 0.0
        then, until = self._full
        now = time.monotonic()
        if now >= until:
            self._full = None
            return 0.0
        if now - self._full_checked >= GATE_CACHE_S:
            self._full_checked = now
            try:
                jobs, tokens = await self._active()
            except BatchyardError:
                jobs, tokens = then  # PostgreSQL is away: keep waiting, bounded by `until`
            if jobs < then[0] or tokens < then[1]:
                log.info("quota.room", active_jobs=jobs, enqueued_tokens=tokens)
                self._full = None
                return 0.0
        return until - now

    async def wait_time(self) -> float:
        """Seconds until this pod may fetch submit messages again (0: now)."""
        local = max(self.paused_until - time.monotonic(), await self._room_wait())
        at, gate = self._gate
        if time.monotonic() - at > GATE_CACHE_S:
            gate, _ = await self.read()
            self._gate = (time.monotonic(), gate)
        shared = 0.0
        if gate is not None and gate.state == "closed" and gate.until is not None:
            shared = (gate.until - _now()).total_seconds()
        return max(local, shared, 0.0)
