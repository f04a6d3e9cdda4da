"""`batch.poll`: poll the job; on success stream its results into PostgreSQL and settle.

Failed items go round again as the next attempt, up to BATCHYARD_MAX_ITEM_ATTEMPTS;
a job that fails whole spends an attempt of every item in it.
"""

from __future__ import annotations

from datetime import datetime

import asyncpg
import structlog
from nats.aio.msg import Msg

from consumers.app import App, utcnow
from consumers.batch import letters, packing, reuse, shards
from consumers.batch.finish import finish_attempt
from consumers.batch.inputs import Input
from consumers.batch.results import ingest_file, ingest_inline
from consumers.batch.sweep import forget_file, sweep_forever
from consumers.errors import AuthError, BatchyardError, PermanentError, RetryableError
from consumers.gemini.jobs import TERMINAL, Job
from consumers.runtime import ACK, Outcome, nak, term
from consumers.status import LIVE
from events import jetstream as defs
from events.payloads import ErrorDetail, InvalidMessage, PollRequest, decode

log = structlog.get_logger("batchyard.poll")


class Poll:
    name = "poll"
    consumer = defs.POLL

    def __init__(self, app: App):
        self.app = app

    async def ready(self) -> None:
        return None

    async def background(self) -> None:
        await sweep_forever(self.app)

    def retry_delay(self, msg: Msg, error: RetryableError) -> float:
        return max(self.app.settings.poll_interval, error.delay or 0.0)

    async def handle(self, msg: Msg) -> Outcome:
        req = decode(msg.data, PollRequest)
        with structlog.contextvars.bound_contextvars(batch_id=req.batch_id, attempt=req.attempt,
                                                     job_name=req.job_name):
            if req.pack is not None:
                return await self._pack(msg, req, req.pack)
            return await self._job(msg, req)

    async def _job(self, msg: Msg, req: PollRequest) -> Outcome:
        """One job of an attempt, its only one (shard 0) or a shard: settle it alone, and
        the attempt once all of its jobs are."""
        app, batch_id, k = self.app, req.batch, req.shard
        row = await app.store.get(batch_id)
        recorded = await shards.rows(app, batch_id, req.attempt)
        mine = next((r for r in recorded if r["shard"] == k), None)
        # A shard's job can finish while later shards are still being created or admitted.
        if (row is None or row["attempt"] != req.attempt or row["status"] not in LIVE
                or mine is None or mine["job_name"] != req.job_name):
            log.info("poll.skipped", reason="not this attempt's running job",
                     status=row["status"] if row else None)
            return ACK
        job = None
        if mine["state"] not in TERMINAL:
            job = await app.gemini.get_job(req.job_name)
            if not job.done:
                await app.quota.progress(batch_id, req.attempt, job, k)
            if row["status"] == "auth_failed":
                await self._unpark(row, recorded)
            if (job := await self._finished(job, mine["created_at"])) is None:
                return nak(app.settings.poll_interval, "waiting")
        async with app.store.claim(batch_id) as claimed:
            if not claimed:
                return nak(app.settings.poll_interval, "busy")
            row = await app.store.get(batch_id)
            if row is None or row["attempt"] != req.attempt or row["status"] not in LIVE:
                return ACK
            recorded = await shards.rows(app, batch_id, req.attempt)
            inp = await reuse.load(app, row)
            if job is not None and any(r["shard"] == k and r["state"] not in TERMINAL
                                       for r in recorded):
                # Results first, then the row: a crash in between is redone, not lost.
                failures, _ = await self._results(job, shards.part(inp, recorded, k))
                await app.quota.finished(batch_id, req.attempt, job.state, k, failures)
            await shards.settle(app, msg, inp, stage="poll")
        if mine["input_file"]:
            await forget_file(app, mine["input_file"])
        return ACK

    async def _pack(self, msg: Msg, req: PollRequest, pack_id: str) -> Outcome:
        """A pack's job: when it ends, each member finishes as if it had been its own."""
        app = self.app
        pack = await app.store.packs.get(pack_id)
        if pack is None or pack["job_name"] != req.job_name:
            log.info("poll.skipped", reason="not this pack's job")
            return ACK
        # The state alone first: the slot comes back before megabytes of results do.
        polled = await app.gemini.get_job(req.job_name, results=False)
        if not polled.done:
            await app.store.packs.progress(pack_id, polled.state)
        if (job := await self._finished(polled, pack["sealed_at"])) is None:
            return nak(app.settings.poll_interval, "waiting")
        if await app.store.packs.handing_off(pack_id):
            return nak(app.settings.poll_interval, "hand-off under way")
        await app.quota.pack_finished(pack_id, job.state)
        async with app.store.claim(f"pack:{pack_id}") as claimed:
            if not claimed:
                return nak(app.settings.poll_interval, "busy")
            if polled.done:
                job = await app.gemini.get_job(req.job_name)
            # A redelivery finds the members it settled already moved on. Members still
            # auth_failed were parked with this poll, replayed before their rows moved.
            found = [m for m in await packing.members(app, pack_id)
                     if m.status in ("submitted", "auth_failed") and m.job_name == job.name]
            if parked := [m.batch_id for m in found if m.status == "auth_failed"]:
                await app.store.unpark(parked, "submitted")
            if found:
                failures, whole = await self._results(job, packing.combined(found))
                for m in found:
                    await finish_attempt(app, msg, m.inp, m.attempt,
                                         packing.split(failures, m.batch_id), stage="poll",
                                         job_name=job.name, path="batch",
                                         whole_job_failed=whole, member=True)
        if pack["input_file"]:
            await forget_file(app, pack["input_file"])
        return ACK

    async def _fail_pack(self, msg: Msg, req: PollRequest, pack_id: str,
                         error: PermanentError | RetryableError) -> Outcome:
        """A pack's job that cannot be polled (deleted, refused): every member's attempt
        fails whole and goes round, and the pack's slot comes back."""
        app = self.app
        log.warning("pack.failed", pack=pack_id, error=error.message)
        failed = Job(name=req.job_name, display_name=f"pack:{pack_id}", state="failed")
        async with app.store.claim(f"pack:{pack_id}") as claimed:
            if not claimed:
                return nak(app.settings.poll_interval, "busy")
            await app.quota.pack_finished(pack_id, "failed")
            for m in await packing.members(app, pack_id):
                if m.status == "submitted" and m.job_name == req.job_name:
                    failures, _ = await self._results(failed, m.inp)
                    await finish_attempt(app, msg, m.inp, m.attempt, failures, stage="poll",
                                         job_name=req.job_name, path="batch",
                                         whole_job_failed=True, member=True)
        return Outcome(ACK.action, label="pack_failed")

    async def _finished(self, job: Job, since: datetime | None) -> Job | None:
        """The job once it is over; None while it may still run. One unfinished after
        BATCHYARD_MAX_WAIT is cancelled, so that the attempt fails whole and its items
        go round again."""
        if job.done:
            return job
        waited = (utcnow() - since).total_seconds() if since else 0.0
        if waited < self.app.settings.max_wait:
            return None
        log.warning("job.stuck", waited_s=round(waited), state=job.state)
        await self.app.gemini.cancel_job(job.name)
        return Job(name=job.name, display_name=job.display_name, state="cancelled")

    async def _unpark(self, row: asyncpg.Record, recorded: list[asyncpg.Record]) -> None:
        """A poll parked at this stage and replayed (or redelivered) before the row moved
        back: the batch is submitted again once every job of its attempt exists."""
        only = recorded[0]["shard"] == 0  # the attempt's one job: no input to read
        if only or shards.covers(recorded, await reuse.load(self.app, row)):
            await self.app.store.move(row["batch_id"], "submitted", on_attempt=row["attempt"],
                                      from_="auth_failed")

    async def _results(self, job: Job, inp: Input) -> tuple[dict[str, ErrorDetail], bool]:
        """Per-item failures of a finished job, and whether the job failed whole."""
        if job.state != "succeeded":
            error = ErrorDetail(status=f"JOB_{job.state.upper()}",
                                message=f"batch job {job.name} ended {job.state}")
            log.warning("job.failed", state=job.state)
            return {item.id: error for item in inp.items}, True
        if job.output_file:
            ingest = await ingest_file(self.app, inp, job.output_file)
        else:
            ingest = await ingest_inline(self.app, inp, job.inline or [])
        log.info("job.ingested", embedded=ingest.embedded, failed=len(ingest.failures))
        return ingest.failures, False

    async def reject(self, msg: Msg, error: InvalidMessage | PermanentError | RetryableError,
                     ) -> Outcome:
        if not isinstance(error, InvalidMessage):
            req = decode(msg.data, PollRequest)
            if req.pack is not None:
                return await self._fail_pack(msg, req, req.pack, error)
            # A shard fails alone, its siblings' paid results kept; an attempt's only job
            # (shard 0) dead-letters its batch.
            if req.shard and (failed := await self._fail_shard(msg, req, error)) is not None:
                return failed
        reason = await letters.reject(self.app, msg, error, stage="poll")
        if not isinstance(error, InvalidMessage):
            # The job will not be polled again: its slot comes back now (the sweep's
            # reconcile would find it later).
            req = decode(msg.data, PollRequest)
            await self.app.quota.finished(req.batch, req.attempt, "failed", req.shard)
        return term(reason)

    async def _fail_shard(self, msg: Msg, req: PollRequest,
                          error: PermanentError | RetryableError) -> Outcome | None:
        """A shard whose job cannot be polled (deleted, refused, out of deliveries) fails
        whole, as a failed job does: its items go round with the attempt's others, and
        its siblings run on, their slots and paid results kept. None when that cannot be
        done (the attempt is over, its input unreadable): dead-letter."""
        app, batch_id, k = self.app, req.batch, req.shard
        try:
            async with app.store.claim(batch_id) as claimed:
                if not claimed:  # a sibling settling, or the submit still creating shards
                    return nak(app.settings.poll_interval, "busy")
                row = await app.store.get(batch_id)
                recorded = await shards.rows(app, batch_id, req.attempt)
                if (row is None or row["attempt"] != req.attempt or row["status"] not in LIVE
                        or not any(r["shard"] == k and r["job_name"] == req.job_name
                                   for r in recorded)):
                    return None
                inp = await reuse.load(app, row)
                detail = ErrorDetail(status="JOB_FAILED", message=f"batch job {req.job_name}"
                                     f" could not be polled: {error.message}")
                items = shards.part(inp, recorded, k).items
                log.warning("shard.failed", shard=k, error=error.message)
                await app.quota.finished(batch_id, req.attempt, "failed", k,
                                         dict.fromkeys((item.id for item in items), detail))
                await shards.settle(app, msg, inp, stage="poll")
        except BatchyardError as exc:
            log.warning("shard.unsettled", shard=k, error=exc.message)
            return None
        return Outcome(ACK.action, label="shard_failed")

    async def park(self, msg: Msg, error: AuthError) -> Outcome:
        req = decode(msg.data, PollRequest)
        if req.pack is not None:  # parked once for the pack, every member auth_failed
            live = [(m.batch_id, m.attempt) for m in await packing.members(self.app, req.pack)
                    if m.job_name == req.job_name]
            await letters.park(self.app, msg, stage="poll", batch_id=req.pack,
                               attempt=req.attempt, error=error, pack=(req.pack, live))
            return ACK
        await letters.park(self.app, msg, stage="poll", batch_id=req.batch,
                           attempt=req.attempt, error=error)
        return ACK
