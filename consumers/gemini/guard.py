"""The circuit breaker across pods: KEY_HEALTH says which key is known bad.

Every pod watches the bucket. While it marks this pod's key invalid, the Gemini
boundary refuses to call (an AuthError, so the message is parked at once): the API
sees no calls with a known-bad key except the health checks. A fingerprint in the
bucket that this pod does not have makes it re-read its key source.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime

import msgspec
import structlog
from nats.js.kv import KeyValue

from consumers import metrics
from consumers.errors import AuthError
from consumers.gemini.keys import KeySource
from consumers.kvdoc import KvDoc
from events import jetstream as defs
from events.payloads import KeyHealth

log = structlog.get_logger("batchyard.keyguard")


def utcnow() -> datetime:
    return datetime.now(UTC)



class KeyGuard:
    def __init__(self, kv: KeyValue, keys: KeySource):
        self.kv = kv
        self.doc = KvDoc(kv, defs.KEY_HEALTH_CURRENT, KeyHealth)
        self.keys = keys
        self.health: KeyHealth | None = None
        self.bad: dict[str, str] = {}  # failed here (with why), whatever the bucket says

    def usable(self, fingerprint: str) -> bool:
        h = self.health
        if fingerprint in self.bad:
            return False
        return not (h is not None and h.fingerprint == fingerprint and h.state == "invalid")

    def stale(self, fingerprint: str) -> bool:
        """Another key is known valid: this pod has yet to pick it up."""
        h = self.health
        return h is not None and h.state == "valid" and h.fingerprint != fingerprint

    async def may_call(self, fingerprint: str) -> None:
        """Raise AuthError instead of calling Gemini with a key marked invalid."""
        if not self.usable(fingerprint):
            reason = self.bad.get(fingerprint) or (self.health.reason if self.health else "")
            raise AuthError(f"key {fingerprint} is marked invalid in KEY_HEALTH: {reason}",
                            status="KEY_MARKED_INVALID")

    async def read(self) -> tuple[KeyHealth | None, int]:
        """The bucket's current value and revision (0 when there is none)."""
        return await self.doc.read()

    async def write(self, health: KeyHealth, revision: int) -> bool:
        """Compare-and-set: True when this write won (so its transition is announced once)."""
        if not await self.doc.write(health, revision):
            return False
        self._seen(health)
        return True

    async def mark_invalid(self, fingerprint: str, reason: str) -> None:
        """The first auth failure of a key trips the breaker for every pod.

        A valid entry for another key is left alone: that key is the newer one.
        """
        self.bad[fingerprint] = reason  # this pod stops at once, before the bucket round-trip
        current, revision = await self.read()
        if current is not None:
            same = current.fingerprint == fingerprint
            if (same and current.state == "invalid") or (not same and current.state == "valid"):
                return
        health = KeyHealth(fingerprint=fingerprint, state="invalid", reason=reason,
                           checked_at=utcnow())
        await self.write(health, revision)

    def _seen(self, health: KeyHealth) -> None:
        self.health = health
        if health.state == "valid":
            self.bad.pop(health.fingerprint, None)
        metrics.KEY_STATE.set({"valid": 1, "invalid": 0}.get(health.state, -1))

    async def watch(self) -> None:
        """Follow the bucket until cancelled."""
        while True:
            try:
                watcher = await self.kv.watch(defs.KEY_HEALTH_CURRENT)
            except Exception as exc:  # bucket unreachable during a reconnect
                log.warning("keyguard.watch_failed", error=repr(exc))
                await asyncio.sleep(1)
                continue
            try:
                async for entry in watcher:
                    if entry is None or not entry.value:
                        continue
                    with contextlib.suppress(msgspec.DecodeError):
                        health = self.doc.decode(entry.value)
                        if health.fingerprint != self.keys.fingerprint:
                            self.keys.refresh()
                        self._seen(health)
            finally:
                with contextlib.suppress(Exception):
                    await watcher.stop()
