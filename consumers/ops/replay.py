"""`batchyard parked replay [--batch ID]`: replay parked messages now, key or not."""

from __future__ import annotations

import structlog
from nats.js.errors import NotFoundError

from consumers import metrics
from consumers.app import App
from consumers.status import UNPARKED_TO
from events import jetstream as defs
from events import subjects
from events.payloads import AuthFailed, InvalidMessage, decode, encode
from events.publisher import publish

log = structlog.get_logger("batchyard.replay")


async def replay_one(app: App, data: bytes, seq: int) -> str | None:
    """Replay the parked message at BATCH_PARKED `seq`; returns its batch_id."""
    try:
        parked = decode(data, AuthFailed)
    except InvalidMessage as exc:
        log.error("parked.unreadable", seq=seq, reason=exc.reason)
        return None
    await app.store.unpark(parked.batch_ids, UNPARKED_TO[parked.stage])
    await publish(app.js, parked.subject, encode(parked.payload), subjects.replay_id(seq))
    try:
        await app.js.delete_msg(defs.BATCH_PARKED, seq)
    except NotFoundError:
        pass  # another pod replayed it first
    metrics.REPLAYED.labels(parked.stage).inc()
    return parked.batch_id or parked.pack


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
                if batch_id not in decode(raw.data or b"", AuthFailed).batch_ids:
                    continue
            except InvalidMessage:
                continue
        if await replay_one(app, raw.data or b"", seq) is not None:
            replayed += 1
    return replayed
