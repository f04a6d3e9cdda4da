"""`recovery`: on `key.valid`, replay every parked message to the stage it failed in.

Each parked message is replayed exactly once: its batch row goes back first (so the
replayed message finds the batch where it expects it), the replay is published with
Nats-Msg-Id `replay:<parked seq>` (a second pod or a redelivery is dropped by the
stream), and only after its PubAck is the parked message acked. Acked messages are then
removed from BATCH_PARKED up to the `replay` consumer's ack floor, so the stream shows
what is still parked.
"""

from __future__ import annotations

import asyncio
import time
from typing import Literal

import msgspec
import structlog
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import ConsumerInfo

from consumers import failpoints, metrics
from consumers.app import App
from consumers.batch.letters import unsettled
from consumers.errors import AuthError, PermanentError, RetryableError
from consumers.runtime import ACK, Outcome, backoff, term
from consumers.status import UNPARKED_TO
from events import jetstream as defs
from events import subjects
from events.payloads import InvalidMessage, KeyValid, decode

log = structlog.get_logger("batchyard.recovery")


class _Parked(msgspec.Struct, frozen=True):
    """What a replay needs of a parked message; its payload is passed on untouched."""

    stage: Literal["submit", "poll"]
    subject: Literal["batch.submit", "batch.poll"]
    payload: msgspec.Raw
    batch_id: str | None = None
    batches: list[str] | None = None  # a pack's members

    @property
    def batch_ids(self) -> list[str]:
        return [self.batch_id] if self.batch_id is not None else list(self.batches or [])


_parked = msgspec.json.Decoder(_Parked)
FETCH = 256
IN_FLIGHT = 4
PURGE_EVERY = 2048
SWEEPS = 5
SWEEP_DELAY = 1.0
DRAIN_BUDGET = 60.0  # seconds a drain waits on replays that failed or are held


async def drain(app: App) -> int:
    """Pull the `replay` consumer until nothing is parked or the key goes bad again.

    Up to IN_FLIGHT fetched batches are replayed at once while the next is fetched. A
    replay that fails (PostgreSQL or NATS away) is nak'ed with a backoff, and the drain
    waits for its redelivery, as it does for messages another pod holds unacked, for up
    to DRAIN_BUDGET; what is still unsettled then is announced again by key-health.
    """
    info = await app.js.consumer_info(defs.BATCH_PARKED, defs.REPLAY.name)
    waiting = unsettled(info)
    if not waiting:
        await _purge_below(app, info)
        return 0
    sub = await app.js.pull_subscribe_bind(durable=defs.REPLAY.name, stream=defs.BATCH_PARKED)
    replayed = 0
    pending: set[asyncio.Task[int]] = set()
    deadline = time.monotonic() + DRAIN_BUDGET
    try:
        # Bounded: a round per 16 parked now, and one per second of the budget.
        since_purge = 0
        for _ in range(waiting // 16 + 10 + int(DRAIN_BUDGET)):
            if not app.guard.usable(app.keys.fingerprint):
                log.warning("recovery.stopped", reason="key invalid again")
                break
            try:
                msgs = await sub.fetch(FETCH, timeout=1.0)
            except (NatsTimeoutError, TimeoutError):
                msgs = []
            if msgs:
                pending.add(asyncio.create_task(_replay_batch(app, msgs)))
            if len(pending) >= IN_FLIGHT or (pending and not msgs):
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                n = sum(t.result() for t in done)
                replayed, since_purge = replayed + n, since_purge + n
            if since_purge >= PURGE_EVERY:
                await _forget_replayed(app)
                since_purge = 0
            if msgs and msgs[-1].metadata.num_pending:
                continue
            if pending:
                replayed += sum(await asyncio.gather(*pending))
                pending = set()
            left = unsettled(await app.js.consumer_info(defs.BATCH_PARKED, defs.REPLAY.name))
            if not left:
                break
            if time.monotonic() > deadline:
                log.warning("recovery.unsettled", left=left)
                break
        if pending:
            replayed += sum(await asyncio.gather(*pending))
            pending = set()
    finally:
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        await sub.unsubscribe()
    await _forget_replayed(app)
    return replayed


async def _replay_batch(app: App, msgs: list[Msg]) -> int:
    """Replay a fetched batch: rows back in two statements, publishes pipelined."""
    parked: list[tuple[Msg, _Parked]] = []
    for msg in msgs:
        try:
            parked.append((msg, _parked.decode(msg.data)))
        except (msgspec.DecodeError, UnicodeDecodeError) as exc:  # only batchyard writes here
            log.error("parked.unreadable", seq=msg.metadata.sequence.stream, reason=str(exc))
            await msg.term()
    try:
        for stage, status in UNPARKED_TO.items():
            ids = [b for _, p in parked if p.stage == stage for b in p.batch_ids]
            if ids:
                await app.store.unpark(ids, status)
        failpoints.hit("replay.after_rows")
    except Exception as exc:  # unacked: redelivered after ack_wait, replayed then
        log.warning("replay.failed", error=repr(exc))
        for msg, _ in parked:
            await msg.nak(delay=backoff(msg.metadata.num_delivered))
        return 0
    acks = [await app.js.publish_async(
        p.subject, bytes(p.payload),
        headers={"Nats-Msg-Id": subjects.replay_id(m.metadata.sequence.stream)})
        for m, p in parked]
    results = await asyncio.gather(*acks, return_exceptions=True)
    done = 0
    for (msg, p), result in zip(parked, results, strict=True):
        if isinstance(result, BaseException):
            log.warning("replay.failed", batches=p.batch_ids, error=repr(result))
            await msg.nak(delay=backoff(msg.metadata.num_delivered))
            continue
        await msg.ack()
        metrics.REPLAYED.labels(p.stage).inc()
        done += 1
    return done


async def _forget_replayed(app: App) -> None:
    """Remove replayed messages: everything below the replay consumer's ack floor."""
    await app.nc.flush()
    await _purge_below(app, await app.js.consumer_info(defs.BATCH_PARKED, defs.REPLAY.name))


async def _purge_below(app: App, info: ConsumerInfo) -> None:
    floor = info.ack_floor.stream_seq if info.ack_floor else 0
    if floor:
        await app.js.purge_stream(defs.BATCH_PARKED, seq=floor + 1)


class Recovery:
    name = "recovery"
    consumer = defs.RECOVERY

    def __init__(self, app: App):
        self.app = app

    async def ready(self) -> None:
        return None

    def retry_delay(self, msg: Msg, error: RetryableError) -> float:
        return backoff(msg.metadata.num_delivered, error.delay)

    async def handle(self, msg: Msg) -> Outcome:
        valid = decode(msg.data, KeyValid)
        if not self.app.settings.auth_recovery_enabled:
            log.info("recovery.disabled", key_fingerprint=valid.fingerprint)
            return ACK
        replayed = await drain(self.app)
        # Pods that had not yet seen the new key may park a few more messages just
        # after the drain; sweep again briefly so none waits for the next key.valid.
        for _ in range(SWEEPS):
            await asyncio.sleep(SWEEP_DELAY)
            parked = (await self.app.js.stream_info(defs.BATCH_PARKED)).state.messages
            if not parked or not self.app.guard.usable(self.app.keys.fingerprint):
                break
            replayed += await drain(self.app)
        log.info("recovery.drained", replayed=replayed, key_fingerprint=valid.fingerprint)
        return ACK

    async def reject(self, msg: Msg, error: InvalidMessage | PermanentError | RetryableError,
                     ) -> Outcome:
        log.warning("recovery.rejected", error=str(error))
        return term("invalid")

    async def park(self, msg: Msg, error: AuthError) -> Outcome:
        return ACK
