"""Dead letters (batch.dead) and parked messages (batch.auth_failed)."""

from __future__ import annotations

import re
from typing import Any

import msgspec
import structlog
from nats.aio.msg import Msg
from nats.js.api import ConsumerInfo

from consumers import metrics
from consumers.app import App, utcnow
from consumers.batch import kept
from consumers.errors import AuthError, BatchyardError, RetryableError
from consumers.status import DIES_WITH
from events import jetstream as defs
from events import subjects
from events.payloads import (
    ID_PATTERN,
    AuthFailed,
    Dead,
    DeadItem,
    ErrorDetail,
    InvalidMessage,
    Stage,
)
from events.publisher import publish

log = structlog.get_logger("batchyard")
_ID = re.compile(ID_PATTERN)
_id = msgspec.json.Decoder()


def original(data: bytes) -> Any:
    """The message as a JSON value when it parses, else its text with bad UTF-8 replaced."""
    try:
        return _id.decode(data)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return data.decode("utf-8", errors="replace")


def readable_batch_id(payload: Any) -> str | None:
    """The message's batch_id if it has a valid one, else None."""
    value = payload.get("batch_id") if isinstance(payload, dict) else None
    return value if isinstance(value, str) and _ID.fullmatch(value) else None


def _attempt(payload: Any) -> int:
    value = payload.get("attempt", 0) if isinstance(payload, dict) else 0
    return value if isinstance(value, int) else 0


async def dead_letter(app: App, msg: Msg, *, stage: str, reason: str,
                      error: ErrorDetail | None, batch_id: str | None = None,
                      payload: Any = None, items: list[DeadItem] | None = None,
                      attempts: int | None = None, member: str | None = None) -> None:
    """Publish one batch.dead for `msg` (id `dead:<seq>`; `dead:<seq>:<batch_id>` for a
    `member` of a pack, whose one poll message settles several batches), then count and
    log it once."""
    body = original(msg.data) if payload is None else payload
    seq = msg.metadata.sequence.stream
    dead = Dead(batch_id=batch_id if batch_id is not None else readable_batch_id(body),
                stage=stage, reason=reason, error=error, subject=msg.subject, payload=body,
                attempts=attempts if attempts is not None else msg.metadata.num_delivered,
                dead_at=utcnow(), items=items)
    letter_id = subjects.dead_id(seq) + (f":{member}" if member else "")
    await publish(app.js, subjects.DEAD, dead, letter_id)
    metrics.DEAD.labels(stage, reason).inc()
    log.warning("message.dead", reason=reason, error=error.message if error else None,
                batch_id=dead.batch_id, items=len(items) if items else None)


async def reject(app: App, msg: Msg, error: InvalidMessage | BatchyardError, *,
                 stage: Stage) -> str:
    """Dead-letter `msg` for `error`; a batch the message was working on becomes dead.

    Returns the reason recorded.
    """
    if isinstance(error, InvalidMessage):
        detail, reason = ErrorDetail(message=error.reason), "invalid_message"
    else:
        detail = error.detail()
        reason = "deliveries_exhausted" if isinstance(error, RetryableError) \
            else "permanent_error"
    body = original(msg.data)
    batch_id = readable_batch_id(body)
    await dead_letter(app, msg, stage=stage, reason=reason, error=detail, batch_id=batch_id)
    if batch_id is not None and not isinstance(error, InvalidMessage):
        # Only the attempt this message carries: a later attempt may be alive.
        await app.store.move(batch_id, "dead", on_attempt=_attempt(body),
                             from_=DIES_WITH[stage], last_error=detail.message)
    return reason


def _last_delivery(msg: Msg, stage: Stage) -> bool:
    limit = defs.SUBMIT.config.max_deliver if stage == "submit" else -1
    return bool(limit and limit > 0 and msg.metadata.num_delivered >= limit)


async def park(app: App, msg: Msg, *, stage: Stage, batch_id: str, attempt: int,
               error: AuthError, pack: tuple[str, list[tuple[str, int]]] | None = None,
               ) -> None:
    """Mark the batch auth_failed (never failed), then park `msg` on batch.auth_failed.

    A pack's poll (`pack`: its id and its live members' batch ids and attempts) is parked
    once for the pack, every member marked auth_failed."""
    fingerprint = app.keys.fingerprint
    if app.guard.stale(fingerprint) and not _last_delivery(msg, stage):
        # Another key is already known valid: retry soon with it instead of parking. On
        # the last delivery (this pod's key file lags the rotation for that long) it is
        # parked all the same: key-health announces key.valid again while anything is
        # parked, so it is replayed, perhaps to a pod that has the new key.
        app.keys.refresh()
        raise RetryableError(f"key {fingerprint} is stale, a newer key is valid")
    if error.status != "KEY_MARKED_INVALID":
        await app.guard.mark_invalid(fingerprint, error.message)
    # Its input outlives BATCH's and BATCH_INPUTS' 7 days for as long as it is parked.
    await kept.keep(app, msg.data, stage, [m for m, _ in pack[1]] if pack else None)
    await _park(app, msg.data, msg.metadata.sequence.stream, stage=stage, error=error,
                members=pack[1] if pack else [(batch_id, attempt)],
                pack=pack[0] if pack else None)


async def park_members(app: App, members: list[tuple[str, int, int, bytes]],
                       error: AuthError) -> None:
    """A pack whose job could not be created for a bad key: each member's own batch.submit
    (`members`: batch id, attempt, stream sequence, data) is parked (CONTRACT §12)."""
    if error.status != "KEY_MARKED_INVALID":
        await app.guard.mark_invalid(app.keys.fingerprint, error.message)
    for batch_id, attempt, seq, data in members:
        await kept.keep(app, data, "submit")
        await _park(app, data, seq, stage="submit", error=error, members=[(batch_id, attempt)])


async def _park(app: App, data: bytes, seq: int, *, stage: Stage, error: AuthError,
                members: list[tuple[str, int]], pack: str | None = None) -> None:
    fingerprint = app.keys.fingerprint
    # The row first: once parked, the message can be replayed at any moment, and the
    # replay must find the batch auth_failed. A crash in between leaves the original
    # unacked (or a pack's members unparked); the next round fails the same way.
    for member, member_attempt in members:
        await app.store.move(
            member, "auth_failed", on_attempt=member_attempt, key_fingerprint=fingerprint,
            last_error=f"{error.code} {error.status}: {error.message}")
    payload = original(data)
    parked = AuthFailed(batch_id=None if pack else members[0][0], stage=stage,
                        subject=subjects.SUBMIT if stage == "submit" else subjects.POLL,
                        payload=payload if isinstance(payload, dict) else {},
                        key_fingerprint=fingerprint, error=error.detail(), failed_at=utcnow(),
                        pack=pack, batches=[m for m, _ in members] if pack else None)
    await publish(app.js, subjects.AUTH_FAILED, parked, subjects.parked_id(seq))
    metrics.PARKED.labels(stage).inc()
    log.warning("message.parked", error=error.message, key_fingerprint=fingerprint,
                batch_id=members[0][0] if not pack else None, pack=pack)


def unsettled(info: ConsumerInfo) -> int:
    """Parked messages not yet replayed: never delivered, or delivered and not acked (a
    replay nak'ed after a failure, or held by a pod that may have stopped)."""
    return (info.num_pending or 0) + (info.num_ack_pending or 0)
