"""`batch.submit`: validate, persist, build the input, create the Gemini job once, hand it on.

A batch of at most BATCHYARD_ONLINE_THRESHOLD items is embedded online instead and
finished here.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import asyncpg
import structlog
from nats.aio.msg import Msg
from nats.errors import Error as NatsError

from consumers import costs, failpoints, metrics
from consumers.app import App, utcnow
from consumers.batch import letters, packing, reuse, shards
from consumers.batch.creation import create_job
from consumers.batch.finish import finish_attempt
from consumers.batch.inputs import Input, load_items
from consumers.batch.online import embed_online
from consumers.errors import AuthError, BatchyardError, PermanentError, RetryableError
from consumers.gemini.jobs import TERMINAL, Job
from consumers.runtime import ACK, Outcome, backoff, nak, term
from consumers.status import FINISHED, RUNNING
from events import jetstream as defs
from events import subjects
from events.payloads import InvalidMessage, PollRequest, SubmitRequest, decode
from events.publisher import PublishError, publish

log = structlog.get_logger("batchyard.submit")
BUSY_DELAY = 5.0
HOLD_PAUSE = 2.0  # after a hold, this pod fetches again no sooner than this
SEAL_EVERY = 0.25  # seconds between the sealer's looks for packs due (one query)
FALLBACK_AFTER = 2  # whole-job failures on the Batch API side before going online
HELD = Outcome(ACK.action, label="held")


class Held(Exception):
    """The batch waits for room (a wait, never a failure): `Submit.handle` puts its
    message back. `full`: there was no room, not just a closed gate."""

    def __init__(self, reason: str, *, full: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.full = full


class Submit:
    name = "submit"
    consumer = defs.SUBMIT

    def __init__(self, app: App):
        self.app = app

    async def ready(self) -> int | None:
        """Hold off fetching while the quota gate is closed or this pod just held a message;
        for a while after a wait for room, one message at a time."""
        # The gate lives in KV; a short bounded sleep re-reads it (the runtime races this
        # against shutdown).
        while (wait := await self.app.quota.wait_time()) > 0:
            await asyncio.sleep(nap := min(wait, 2.0))
            metrics.QUOTA_WAIT.inc(nap)
        return 1 if time.monotonic() < self.app.quota.careful_until else None

    async def background(self) -> None:
        """The sealer: packs that are full or have waited long enough get their job."""
        if not self.app.settings.pack_wait:
            return
        woke = asyncio.Event()
        while True:
            try:
                async with self.app.store.packs.woken(woke.set) as listening:
                    while listening():
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(woke.wait(), SEAL_EVERY)
                        woke.clear()
                        await self._seal_due()
            except (BatchyardError, PublishError, NatsError, TimeoutError) as exc:
                log.warning("pack.seal_failed", error=repr(exc))
                await asyncio.sleep(SEAL_EVERY)

    async def _seal_due(self) -> None:
        for pack_id in await self.app.store.packs.due(self.app.settings.pack_wait,
                                                      SEAL_EVERY * 4):
            await self._seal(pack_id)

    async def _seal(self, pack_id: str) -> None:
        """Take the pack's slot and create its job once (a retry adopts the job a lost
        answer made), then hand it to poll. Waits, without calling, while the gate is
        closed or there is no room; a bad key parks each member's own message."""
        app = self.app
        began = time.monotonic()
        async with app.store.claim(f"pack:{pack_id}") as claimed:
            if not claimed:
                return
            pack = await app.store.packs.get(pack_id)
            if pack is not None and pack["job_name"] and pack["state"] in ("pending", "running"):
                # A sealer stopped between the job and its hand-off: finish the hand-off.
                found = await packing.members(app, pack_id)
                await self._hand_off(pack_id, pack["job_name"], pack["input_file"], found)
                return
            if pack is not None and not pack["job_name"] and pack["state"] == "cancelled":
                await packing.park_left(app, pack_id)  # a sealer stopped while parking
                return
            s = app.settings
            admitted = await app.store.packs.admit(pack_id, s.max_active_jobs,
                                                   s.max_enqueued_tokens)
            if admitted is None:
                return
            adopt = admitted == "again"
            if not adopt and not await app.quota.may_create():
                await app.store.packs.release(pack_id)
                return
            found = await packing.members(app, pack_id)
            if not found:
                await app.store.packs.finished(pack_id, "cancelled")
                return
            failpoints.hit("pack.after_admit")
            inp = packing.combined(found)
            with structlog.contextvars.bound_contextvars(pack=pack_id):
                if (made := await self._create_pack(pack_id, inp, found, adopt)) is None:
                    return
                job, input_file = made
                failpoints.hit("pack.after_create")
                await app.store.packs.created(pack_id, job.name, input_file)
                await costs.submitted(app, inp, "batch")
                await app.quota.succeeded()
                failpoints.hit("pack.before_poll")
                await self._hand_off(pack_id, job.name, input_file, found)
                log.info("pack.submitted", job_name=job.name, batches=len(found),
                         items=len(inp.items), took_s=round(time.monotonic() - began, 3))

    async def _create_pack(self, pack_id: str, inp: Input, found: list[packing.Member],
                           adopt: bool) -> tuple[Job, str | None] | None:
        """The pack's job, or None when this round ends without one."""
        app = self.app
        try:
            return await create_job(app, inp, f"pack:{pack_id}", adopt=adopt)
        except RetryableError as exc:
            if exc.quota:
                await app.store.packs.release(pack_id)
                await app.quota.close(exc.delay, exc.message)
            return None  # else the job may exist: the next round adopts it
        except AuthError as exc:
            if adopt or app.guard.stale(app.keys.fingerprint):
                # A newer key is valid (the next round uses it), or the job may exist
                # from a lost answer: a new pack could pay for it twice.
                app.keys.refresh()
                await app.store.packs.release(pack_id)
                return None
            await packing.key_refused(app, pack_id, found, exc)
            return None
        except PermanentError as exc:
            await packing.refused(app, pack_id, found, exc)
            return None

    async def _hand_off(self, pack_id: str, job_name: str, input_file: str | None,
                        found: list[packing.Member]) -> None:
        """The poll first, then the members' rows: a pack's poll waits while a member is
        still `submitting`, and a sealer that stops in between leaves the pack due."""
        poll = PollRequest(pack=pack_id, job_name=job_name)
        await publish(self.app.js, subjects.POLL, poll, subjects.pack_poll_id(pack_id))
        await self.app.store.packs.submitted([(m.batch_id, m.attempt) for m in found],
                                             job_name, input_file)

    def retry_delay(self, msg: Msg, error: RetryableError) -> float:
        return backoff(msg.metadata.num_delivered, error.delay)

    async def handle(self, msg: Msg) -> Outcome:
        req = decode(msg.data, SubmitRequest)
        with structlog.contextvars.bound_contextvars(batch_id=req.batch_id, attempt=req.attempt):
            try:
                return await self._handle(msg, req)
            except Held as held:
                return await self._put_back(msg, held)

    async def _handle(self, msg: Msg, req: SubmitRequest) -> Outcome:
        app, batch_id = self.app, req.batch_id
        items = await load_items(app, req)
        row = await app.store.create_or_get(batch_id, req.model.removeprefix("models/"),
                                            len(items), req.attempt, req.source)
        if (skip := await self._already(msg, row, req)) is not None:
            return skip
        async with app.store.claim(batch_id) as claimed:
            if not claimed:
                return await self._busy(msg)
            row = await app.store.get(batch_id)
            if row is None or (skip := await self._already(msg, row, req)) is not None:
                return skip or ACK
            seq = msg.metadata.sequence.stream
            await app.store.move(
                batch_id, "submitting", attempt=req.attempt, input_seq=seq,
                key_fingerprint=app.keys.fingerprint,
                origin_seq=seq if row["origin_seq"] is None else row["origin_seq"])
            inp, _ = await reuse.resolve(app, Input(req, items), row)
            if not inp.items:
                # Every item copied from a stored vector: nothing to pay for, and no key
                # needed, so this finishes while the key is bad too.
                await finish_attempt(app, msg, inp, req.attempt, {}, stage="submit",
                                     job_name=None, path=None)
                return ACK
            fallback = app.settings.fallback_to_online and row["job_failures"] >= FALLBACK_AFTER
            if len(inp.items) <= app.settings.online_threshold or fallback:
                if fallback:
                    log.info("batch.fallback_online", job_failures=row["job_failures"])
                await self._online(msg, inp)
                return ACK
            if packing.eligible(app, inp, alone=row["job_failures"] > 0):
                await packing.join(app, inp)  # the sealer creates the pack's job
                return ACK
            parts, recorded = await shards.plan(app, inp)
            return await self._submit_jobs(msg, inp, row, parts, recorded)

    async def _held(self, req: SubmitRequest, reason: str, *, full: bool = False) -> Held:
        """The Held to raise for a batch that waits for room, its row back in
        pending_submission while this pod still holds the batch's claim."""
        await self.app.store.move(req.batch_id, "pending_submission", on_attempt=req.attempt,
                                  from_="submitting")
        return Held(reason, full=full)

    async def _put_back(self, msg: Msg, held: Held) -> Outcome:
        """Put a held message back on batch.submit (a wait spends no deliveries), now that
        the batch's claim is let go: a peer taking the copy at once must not find the batch
        busy and spend a delivery on it. After no room (`full`) this pod fetches no more
        until a job finishes or the cooldown passes."""
        self.app.quota.paused_until = time.monotonic() + HOLD_PAUSE
        if held.full:
            await self.app.quota.full()
        metrics.HELD.inc()
        log.info("submit.held", reason=held.reason)
        await publish(self.app.js, subjects.SUBMIT, msg.data,
                      subjects.held_id(msg.metadata.sequence.stream))
        return HELD

    async def _busy(self, msg: Msg) -> Outcome:
        """Another pod is working on this batch: wait. On the last delivery the wait goes
        on as a fresh copy (dead-lettering would kill a batch that is alive)."""
        if msg.metadata.num_delivered < defs.SUBMIT_MAX_DELIVER:
            return nak(BUSY_DELAY, "busy")
        await publish(self.app.js, subjects.SUBMIT, msg.data,
                      subjects.held_id(msg.metadata.sequence.stream))
        return Outcome(ACK.action, label="requeued")

    async def _already(self, msg: Msg, row: asyncpg.Record, req: SubmitRequest) -> Outcome | None:
        """ACK for a message whose attempt is stale or done; None when there is work."""
        attempt, status = row["attempt"], row["status"]
        if attempt > req.attempt or (attempt == req.attempt and status in FINISHED):
            log.info("submit.skipped", reason="attempt already handled", status=status)
            return ACK
        if attempt < req.attempt and status in RUNNING:
            # An earlier attempt still runs (its finish announces the next attempt just
            # before moving the row on): taking the row now would orphan its job.
            log.info("submit.waiting", reason="an earlier attempt is running", status=status)
            return await self._busy(msg)
        if attempt == req.attempt and status == "submitted" and row["job_name"]:
            # The job exists: the poll hand-off may have been lost in a crash (a pack's
            # is the sealer's to make).
            if not await self.app.store.packs.pack_of(req.batch_id, attempt):
                await self._hand_to_poll(req.batch_id, attempt, row["job_name"])
            return ACK
        return None

    async def _submit_jobs(self, msg: Msg, inp: Input, row: asyncpg.Record,
                           parts: list[tuple[int, Input]],
                           recorded: dict[int, asyncpg.Record]) -> Outcome:
        """Create the attempt's jobs in order, its one (shard 0) or its shards, each
        admitted on its own; resumable anywhere. A job goes to poll when the next one's
        turn comes (it may end while that one waits for room), the last once the batch
        row is submitted: an unsplit attempt's poll must find the row naming its job."""
        app, req = self.app, inp.request
        batch_id, attempt = req.batch_id, req.attempt
        made: tuple[str | None, str | None] = (None, None)  # the last job and its file
        unpolled: tuple[str, int] | None = None
        for k, part in parts:
            if unpolled is not None:
                await self._hand_to_poll(batch_id, attempt, *unpolled)
                unpolled = None
                failpoints.hit("submit.between_shards")
            done = recorded.get(k)
            if done is not None and (done["job_name"] or done["state"] in TERMINAL):
                made = (done["job_name"], done["input_file"])
                if done["job_name"] and done["state"] not in TERMINAL:
                    unpolled = (done["job_name"], k)
                continue
            try:
                job, input_file = await self._admitted(part, k)
            except PermanentError as exc:
                if k == parts[0][0]:  # the attempt's first job: nothing of it runs yet
                    await app.quota.release(batch_id, attempt, k)
                    return await self._refused(msg, inp, row, exc)
                # Earlier shards are running: this one fails whole, and its items go
                # round with the attempt's other failures.
                log.warning("shard.refused", shard=k, error=exc.message)
                await app.quota.finished(batch_id, attempt, "failed", k, dict.fromkeys(
                    (item.id for item in part.items), exc.detail()))
                continue
            made, unpolled = (job.name, input_file), (job.name, k)
            log.info("shard.submitted" if k else "batch.submitted", shard=k, shards=len(parts),
                     job_name=job.name, items=len(part.items), input_file=input_file)
        # The row names an unsplit attempt's job, none of a split one's (CONTRACT §11); a
        # split attempt resumed keeps its submitted_at.
        split = parts[0][0] > 0
        job_name, input_file = (None, None) if split else made
        await app.store.move(
            batch_id, "submitted", on_attempt=attempt, from_=("submitting", "submitted"),
            job_name=job_name, input_file=input_file, last_error=None,
            submitted_at=row["submitted_at"] if split and row["submitted_at"] else utcnow())
        if unpolled is not None:
            await self._hand_to_poll(batch_id, attempt, *unpolled)
        await shards.settle(app, msg, inp, stage="submit")  # all jobs may be done already
        return ACK

    async def _admitted(self, inp: Input, shard: int) -> tuple[Job, str | None]:
        """Take a slot, pass the gate, and create (or adopt) the job of `shard` of `inp`'s
        attempt: the job and its input file. Raises Held when the Batch API has no room.
        A creation the API answered with a 429 or an auth error gives its slot back; one
        whose outcome is unknown keeps it (the next try adopts); on PermanentError the
        caller settles (a refused shard keeps its row, as failed)."""
        app, req = self.app, inp.request
        batch_id, attempt = req.batch_id, req.attempt
        name = subjects.display_name(batch_id, attempt, shard)
        reserved = await app.quota.reserve(batch_id, attempt, name, len(inp.items),
                                           inp.est_tokens(), inp.model, shard=shard)
        if reserved is None:
            raise await self._held(req, "no room: active jobs or enqueued tokens at limit",
                                   full=True)
        # The row of an earlier try (a crash, a lost answer) may have a job: look it up
        # before creating one.
        adopt = reserved == "again"
        if not adopt and not await app.quota.may_create():
            await app.quota.release(batch_id, attempt, shard)
            raise await self._held(req, "the quota gate is closed")
        try:
            job, input_file = await create_job(app, inp, name, adopt=adopt)
        except RetryableError as exc:
            if not exc.quota:
                # No answer, or a 5xx: the job may exist. Row and slot stay, and the next
                # try looks the job up by display_name before it creates one.
                raise
            await app.quota.release(batch_id, attempt, shard)
            await app.quota.close(exc.delay, exc.message)
            raise await self._held(req, f"429 on creation: {exc.message}") from exc
        except AuthError:
            await app.quota.release(batch_id, attempt, shard)  # parked: no job, no slot
            raise
        failpoints.hit("submit.after_create")
        await app.quota.created(batch_id, attempt, job.name, input_file, shard=shard)
        await costs.submitted(app, inp, "batch")
        await app.quota.succeeded()
        return job, input_file

    async def _refused(self, msg: Msg, inp: Input, row: asyncpg.Record,
                       exc: PermanentError) -> Outcome:
        """The Batch API refuses the batch (e.g. no batch endpoint for the model)."""
        if not self.app.settings.fallback_to_online:
            raise exc
        # Retrying cannot help; the online path can.
        log.warning("batch.fallback_online", error=exc.message)
        await self.app.store.update(inp.request.batch_id, job_failures=row["job_failures"] + 1)
        await self._online(msg, inp)
        return ACK

    async def _online(self, msg: Msg, inp: Input) -> None:
        await costs.submitted(self.app, inp, "online")
        ingest = await embed_online(self.app, inp)
        await self.app.store.move(inp.request.batch_id, "submitted",
                                  on_attempt=inp.request.attempt, submitted_at=utcnow())
        await finish_attempt(self.app, msg, inp, inp.request.attempt, ingest.failures,
                             stage="submit", job_name=None, path="online")

    async def _hand_to_poll(self, batch_id: str, attempt: int, job_name: str,
                            shard: int = 0) -> None:
        poll = PollRequest(batch_id=batch_id, job_name=job_name, attempt=attempt, shard=shard)
        await publish(self.app.js, subjects.POLL, poll,
                      subjects.poll_id(batch_id, attempt, shard))

    async def reject(self, msg: Msg, error: InvalidMessage | PermanentError | RetryableError,
                     ) -> Outcome:
        return term(await letters.reject(self.app, msg, error, stage="submit"))

    async def park(self, msg: Msg, error: AuthError) -> Outcome:
        req = decode(msg.data, SubmitRequest)
        await letters.park(self.app, msg, stage="submit", batch_id=req.batch_id,
                           attempt=req.attempt, error=error)
        return ACK

