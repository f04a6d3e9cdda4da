"""`key-health`: check the key on a timer and on `key.rotated`; announce transitions.

Checks from several pods are reconciled through KEY_HEALTH with compare-and-set, so
each transition is written and announced once, and no pod with an older key can
overwrite a newer key's valid state (no flapping while a rotation propagates).
"""

from __future__ import annotations

import asyncio

import structlog
from nats.aio.msg import Msg
from nats.errors import Error as NatsError

from consumers.app import App, utcnow
from consumers.batch.letters import unsettled
from consumers.errors import AuthError, PermanentError, RetryableError
from consumers.runtime import ACK, Outcome, backoff, term
from events import jetstream as defs
from events import subjects
from events.payloads import InvalidMessage, KeyHealth, KeyInvalid, KeyValid, decode_key_rotated
from events.publisher import PublishError, publish

log = structlog.get_logger("batchyard.key_health")
_CAS_TRIES = 5


class KeyHealthRole:
    name = "key-health"
    consumer = defs.KEY_ROTATED

    def __init__(self, app: App):
        self.app = app
        self._lock = asyncio.Lock()

    async def ready(self) -> None:
        return None

    def retry_delay(self, msg: Msg, error: RetryableError) -> float:
        return backoff(msg.metadata.num_delivered, error.delay)

    async def handle(self, msg: Msg) -> Outcome:
        try:
            rotated = decode_key_rotated(msg.data)
            log.info("key.rotated", source=rotated.source, announced=rotated.fingerprint)
        except InvalidMessage as exc:  # still a sign that the key changed: check it
            log.warning("key.rotated_unreadable", reason=exc.reason)
        self.app.keys.refresh()
        await self.check(rotated=True)
        return ACK

    async def background(self) -> None:
        """The periodic check, until cancelled."""
        while True:
            try:
                await self.check()
            except (RetryableError, PublishError, NatsError, TimeoutError) as exc:
                # NATS or the database is away for a while: the next round checks again.
                log.warning("key.check_failed", error=repr(exc))
            await asyncio.sleep(self.app.settings.key_check_interval)

    async def check(self, rotated: bool = False) -> str | None:
        """Check the current key; returns its state, or None when the check was inconclusive.

        Only a check prompted by `key.rotated` may replace another key's entry with an
        invalid one: a periodic check from a pod that has not yet seen the new key file
        must not undo the rotation.
        """
        app = self.app
        async with self._lock:
            fingerprint = app.keys.fingerprint
            try:
                await app.gemini.check_key(app.settings.model)
                state, reason = "valid", ""
            except AuthError as exc:
                state, reason = "invalid", exc.message
            except (RetryableError, PermanentError) as exc:
                log.info("key.check_inconclusive", error=exc.message, key_fingerprint=fingerprint)
                return None
            await self._record(fingerprint, state, reason, rotated)
            return state

    async def _record(self, fingerprint: str, state: str, reason: str, rotated: bool) -> None:
        guard = self.app.guard
        for _ in range(_CAS_TRIES):
            current, revision = await guard.read()
            if current is not None and current.fingerprint != fingerprint and state == "invalid":
                if current.state == "valid" or not rotated:
                    # Another key is valid (this pod is stale), or this is no rotation.
                    self.app.keys.refresh()
                    return
            changed = current is None or current.fingerprint != fingerprint \
                or current.state != state
            now = utcnow()
            health = KeyHealth(fingerprint=fingerprint, state=state,  # type: ignore[arg-type]
                               reason=reason, checked_at=now)
            if await guard.write(health, revision):
                if changed:
                    await self._announce(fingerprint, state, reason, revision)
                elif state == "valid":
                    await self._stranded(fingerprint, revision)
                return

    async def _stranded(self, fingerprint: str, revision: int) -> None:
        """The key is valid yet messages are parked (parked by a pod that had not seen
        the new key when the last drain ran): announce key.valid again for them."""
        # Not the stream's count: replayed messages stay in it until the next purge. A
        # message delivered and never acked (a failed replay, a pod stopped mid-drain)
        # is still parked.
        info = await self.app.js.consumer_info(defs.BATCH_PARKED, defs.REPLAY.name)
        if parked := unsettled(info):
            floor = info.ack_floor.stream_seq if info.ack_floor else 0
            log.info("key.parked_while_valid", parked=parked)
            await self._announce(fingerprint, "valid", "", revision, suffix=f":{floor}")

    async def _announce(self, fingerprint: str, state: str, reason: str, revision: int,
                        suffix: str = "") -> None:
        now = utcnow()
        if state == "valid":
            body: KeyValid | KeyInvalid = KeyValid(
                fingerprint=fingerprint, model=self.app.settings.model, checked_at=now)
            subject = subjects.KEY_VALID
        else:
            body = KeyInvalid(fingerprint=fingerprint, reason=reason, checked_at=now)
            subject = subjects.KEY_INVALID
        await publish(self.app.js, subject, body, f"{subject}:{fingerprint}:{revision}{suffix}")
        log.info("key.transition", state=state, key_fingerprint=fingerprint)

    async def reject(self, msg: Msg, error: InvalidMessage | PermanentError | RetryableError,
                     ) -> Outcome:
        log.warning("key.check_failed", error=str(error))
        return term("failed")

    async def park(self, msg: Msg, error: AuthError) -> Outcome:
        return ACK  # a check's auth failure is its answer, recorded above
