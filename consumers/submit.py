"""`batch.submit`: validate, persist, build the input, create the Gemini job once, hand it on.

A batch of at most BATCHYARD_ONLINE_THRESHOLD items is embedded online instead and
finished here.
"""

from __future__ import annotations

import asyncio
import time

import asyncpg
import structlog
from nats.aio.msg import Msg

from consumers import failpoints, letters, metrics
from consumers._runtime import ACK, Outcome, backoff, nak, term
from consumers.app import App, utcnow
from consumers.errors import AuthError, PermanentError, RetryableError
from consumers.finish import finish_attempt
from consumers.gemini import Job
from consumers.inputs import INLINE_MAX_BYTES, Input, load_items
from consumers.online import embed_online
from consumers.results import ingest_vectors
from consumers.store import FINISHED
from events import jetstream as defs
from events import subjects
from events.payloads import InvalidMessage, PollRequest, SubmitRequest, decode
from events.publisher import publish

log = structlog.get_logger("batchyard.submit")
BUSY_DELAY = 5.0
HOLD_PAUSE = 2.0  # after a hold, this pod fetches again no sooner than this
FALLBACK_AFTER = 2  # whole-job failures on the Batch API side before going online


class Submit:
    name = "submit"
    consumer = defs.SUBMIT

    def __init__(self, app: App):
        self.app = app

    async def ready(self) -> None:
        """Hold off fetching while the quota gate is closed or this pod just held a message."""
        # The gate lives in KV; a short bounded sleep re-reads it (the runtime races this
        # against shutdown).
        while (wait := await self.app.quota.wait_time()) > 0:  # noqa: ASYNC110
            await asyncio.sleep(min(wait, 2.0))

    def retry_delay(self, msg: Msg, error: RetryableError) -> float:
        return backoff(msg.metadata.num_delivered, error.delay)

    async def handle(self, msg: Msg) -> Outcome:
        req = decode(msg.data, SubmitRequest)
        with structlog.contextvars.bound_contextvars(batch_id=req.batch_id, attempt=req.attempt):
            return await self._handle(msg, req)

    async def _handle(self, msg: Msg, req: SubmitRequest) -> Outcome:
        app, batch_id = self.app, req.batch_id
        items = await load_items(app, req)
        row = await app.store.create_or_get(batch_id, req.model.removeprefix("models/"),
                                            len(items), req.attempt, req.source)
        if (skip := await self._already(row, req)) is not None:
            return skip
        async with app.store.claim(batch_id) as claimed:
            if not claimed:
                return nak(BUSY_DELAY, "busy")
            row = await app.store.get(batch_id)
            if row is None or (skip := await self._already(row, req)) is not None:
                return skip or ACK
            inp = Input(req, items)
            crashed = row["status"] == "submitting" and row["attempt"] == req.attempt
            seq = msg.metadata.sequence.stream
            await app.store.update(
                batch_id, status="submitting", attempt=req.attempt, input_seq=seq,
                key_fingerprint=app.keys.fingerprint,
                origin_seq=seq if row["origin_seq"] is None else row["origin_seq"])
            fallback = app.settings.fallback_to_online and row["job_failures"] >= FALLBACK_AFTER
            if len(items) <= app.settings.online_threshold or fallback:
                if fallback:
                    log.info("batch.fallback_online", job_failures=row["job_failures"])
                await self._online(msg, inp)
                return ACK
            name = subjects.display_name(batch_id, req.attempt)
            if not await app.quota.reserve(batch_id, req.attempt, name, len(items),
                                           inp.est_tokens(), inp.model):
                return await self._hold(msg, "no room: active jobs or enqueued tokens at limit")
            if not crashed and not await app.quota.may_create():
                await app.quota.release(batch_id, req.attempt)
                return await self._hold(msg, "the quota gate is closed")
            try:
                job, input_file = await self._create(inp, adopt=crashed)
            except RetryableError as exc:
                await app.quota.release(batch_id, req.attempt)
                if not exc.quota:
                    raise
                await app.quota.close(exc.delay, exc.message)
                return await self._hold(msg, f"429 on creation: {exc.message}")
            except AuthError:
                await app.quota.release(batch_id, req.attempt)  # parked: no job, no slot
                raise
            except PermanentError as exc:
                await app.quota.release(batch_id, req.attempt)
                if not app.settings.fallback_to_online:
                    raise
                # The Batch API refuses this batch (e.g. no batch endpoint for the model):
                # retrying cannot help, the online path can.
                log.warning("batch.fallback_online", error=exc.message)
                await app.store.update(batch_id, job_failures=row["job_failures"] + 1)
                await self._online(msg, inp)
                return ACK
            failpoints.hit("submit.after_create")
            await app.quota.created(batch_id, req.attempt, job.name, input_file)
            await app.quota.succeeded()
            await app.store.update(
                batch_id, {"attempt": req.attempt, "status": "submitting"}, status="submitted",
                job_name=job.name, input_file=input_file, submitted_at=utcnow(), last_error=None)
        await self._hand_to_poll(batch_id, req.attempt, job.name)
        log.info("batch.submitted", job_name=job.name, items=len(items), input_file=input_file)
        return ACK

    async def _hold(self, msg: Msg, why: str) -> Outcome:
        """Put the message back on batch.submit for later; waiting spends no deliveries."""
        req = decode(msg.data, SubmitRequest)
        await self.app.store.update(req.batch_id, {"attempt": req.attempt, "status": "submitting"},
                                    status="pending_submission")
        await publish(self.app.js, subjects.SUBMIT, msg.data,
                      subjects.held_id(msg.metadata.sequence.stream))
        self.app.quota.paused_until = time.monotonic() + HOLD_PAUSE
        metrics.HELD.inc()
        log.info("submit.held", reason=why)
        return Outcome(ACK.action, label="held")

    async def _already(self, row: asyncpg.Record, req: SubmitRequest) -> Outcome | None:
        """ACK for a message whose attempt is stale or done; None when there is work."""
        attempt, status = row["attempt"], row["status"]
        if attempt > req.attempt or (attempt == req.attempt and status in FINISHED):
            log.info("submit.skipped", reason="attempt already handled", status=status)
            return ACK
        if attempt == req.attempt and status == "submitted" and row["job_name"]:
            # The job exists: the poll hand-off may have been lost in a crash.
            await self._hand_to_poll(req.batch_id, attempt, row["job_name"])
            return ACK
        return None

    async def _create(self, inp: Input, *, adopt: bool) -> tuple[Job, str | None]:
        """Create the attempt's job, or adopt the one a crashed pod created."""
        app, req = self.app, inp.request
        name = subjects.display_name(req.batch_id, req.attempt)
        if adopt:
            found = await app.gemini.find_job(name)
            if found is not None:
                log.info("job.adopted", job_name=found.name)
                return found, None
        data = inp.jsonl()
        if len(data) <= INLINE_MAX_BYTES:
            job = await app.gemini.create_job(
                inp.model, name, texts=[i.text for i in inp.items], config=inp.embed_config())
            return job, None
        file_name = await app.gemini.upload_jsonl(data, name)
        try:
            job = await app.gemini.create_job(inp.model, name, file_name=file_name)
        except (RetryableError, PermanentError, AuthError):
            await _forget_file(app, file_name)
            raise
        return job, file_name

    async def _online(self, msg: Msg, inp: Input) -> None:
        ingest = await ingest_vectors(self.app, inp, await embed_online(self.app, inp))
        await self.app.store.update(inp.request.batch_id, {"attempt": inp.request.attempt},
                                    status="submitted", submitted_at=utcnow())
        await finish_attempt(self.app, msg, inp, inp.request.attempt, ingest.failures,
                             stage="submit", job_name=None, path="online")

    async def _hand_to_poll(self, batch_id: str, attempt: int, job_name: str) -> None:
        poll = PollRequest(batch_id=batch_id, job_name=job_name, attempt=attempt)
        await publish(self.app.js, subjects.POLL, poll, subjects.poll_id(batch_id, attempt))

    async def reject(self, msg: Msg, error: InvalidMessage | PermanentError | RetryableError,
                     ) -> Outcome:
        return term(await letters.reject(self.app, msg, error, stage="submit",
                                         working=["submitting", "pending_submission"]))

    async def park(self, msg: Msg, error: AuthError) -> Outcome:
        req = decode(msg.data, SubmitRequest)
        await letters.park(self.app, msg, stage="submit", batch_id=req.batch_id,
                           attempt=req.attempt, error=error)
        return ACK


async def _forget_file(app: App, file_name: str) -> None:
    try:
        await app.gemini.delete_file(file_name)
    except (RetryableError, PermanentError, AuthError) as exc:
        log.warning("file.delete_failed", file=file_name, error=exc.message)
