"""`recovery`: on `key.valid`, replay every parked message to the stage it failed in.

Each parked message is replayed exactly once: its batch row goes back first (so the
replayed message finds the batch where it expects it), the replay is published with
Nats-Msg-Id `replay:<parked seq>` (a second pod or a redelivery is dropped by the
stream), and only then is the parked message deleted.
"""

from __future__ import annotations

import asyncio

import structlog
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.errors import NotFoundError

from consumers import metrics
from consumers._runtime import ACK, Outcome, backoff, term
from consumers.app import App
from consumers.errors import AuthError, PermanentError, RetryableError
from events import jetstream as defs
from events import subjects
from events.payloads import AuthFailed, InvalidMessage, KeyValid, decode, encode
from events.publisher import publish

log = structlog.get_logger("batchyard.recovery")
FETCH = 256


async def replay_one(app: App, data: bytes, seq: int) -> str | None:
    """Replay the parked message at BATCH_PARKED `seq`; returns its batch_id."""
    try:
        parked = decode(data, AuthFailed)
    except InvalidMessage as exc:
        log.error("parked.unreadable", seq=seq, reason=exc.reason)
        return None
    status = "pending_submission" if parked.stage == "submit" else "submitted"
    await app.store.update(parked.batch_id, {"status": "auth_failed"}, status=status,
                           last_error=None)
    await publish(app.js, parked.subject, encode(parked.payload), subjects.replay_id(seq))
    try:
        await app.js.delete_msg(defs.BATCH_PARKED, seq)
    except NotFoundError:
        pass  # another pod replayed it first
    metrics.REPLAYED.labels(parked.stage).inc()
    return parked.batch_id


async def drain(app: App) -> int:
    """Pull the `replay` consumer until BATCH_PARKED is empty or the key goes bad again."""
    sub = await app.js.pull_subscribe_bind(durable=defs.REPLAY.name, stream=defs.BATCH_PARKED)
    replayed = 0
    try:
        info = await app.js.stream_info(defs.BATCH_PARKED)
        rounds = info.state.messages // FETCH + 10  # bounded: what is parked now, and a margin
        for _ in range(rounds):
            if not app.guard.usable(app.keys.fingerprint):
                log.warning("recovery.stopped", reason="key invalid again")
                break
            try:
                msgs = await sub.fetch(FETCH, timeout=1.0)
            except (NatsTimeoutError, TimeoutError):
                break
            done = await asyncio.gather(*(_one(app, m) for m in msgs))
            replayed += sum(done)
    finally:
        await sub.unsubscribe()
    return replayed


async def _one(app: App, msg: Msg) -> int:
    try:
        await replay_one(app, msg.data, msg.metadata.sequence.stream)
    except Exception as exc:  # left unacked: redelivered after ack_wait, replayed then
        log.warning("replay.failed", error=repr(exc))
        await msg.nak(delay=backoff(msg.metadata.num_delivered))
        return 0
    await msg.ack()
    return 1


async def replay_by_hand(app: App, batch_id: str | None = None) -> int:
    """`batchyard parked replay [--batch ID]`: replay parked messages now, key or not."""
    info = await app.js.stream_info(defs.BATCH_PARKED)
    replayed = 0
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        try:
            raw = await app.js.get_msg(defs.BATCH_PARKED, seq)
        except NotFoundError:
            continue
        if batch_id is not None:
            try:
                if decode(raw.data or b"", AuthFailed).batch_id != batch_id:
                    continue
            except InvalidMessage:
                continue
        if await replay_one(app, raw.data or b"", seq) is not None:
            replayed += 1
    return replayed


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
        log.info("recovery.drained", replayed=replayed, key_fingerprint=valid.fingerprint)
        return ACK

    async def reject(self, msg: Msg, error: InvalidMessage | PermanentError | RetryableError,
                     ) -> Outcome:
        log.warning("recovery.rejected", error=str(error))
        return term("invalid")

    async def park(self, msg: Msg, error: AuthError) -> Outcome:
        return ACK
