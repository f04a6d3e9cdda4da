"""Gauges read when /metrics is scraped: the state the alerts and the dashboard watch.

Parked messages, consumer lag, the quota gate and admission live in JetStream and
PostgreSQL, shared by every pod, so each pod reports the same values and the rules take
`max` across pods. Reading them only when scraped keeps an idle pod free of the queries,
and one reading serves every scrape within SAMPLE_EVERY.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import structlog
from prometheus_client import Gauge

from consumers import metrics
from events import jetstream as defs

if TYPE_CHECKING:
    from consumers.app import App

log = structlog.get_logger("batchyard.metrics")
SAMPLE_EVERY = 10.0
TIMEOUT = 3.0  # a scrape must answer while PostgreSQL or NATS is away

PARKED_NOW = Gauge("batchyard_parked_messages", "messages parked on BATCH_PARKED now")
PENDING = Gauge("batchyard_consumer_pending", "messages not yet delivered to a durable consumer",
                ["consumer"])
ACK_PENDING = Gauge("batchyard_consumer_ack_pending",
                    "messages delivered to a durable consumer and not yet acknowledged",
                    ["consumer"])
GATE = Gauge("batchyard_quota_gate_closed", "1 while the shared quota gate is closed")
ACTIVE_JOBS = Gauge("batchyard_active_jobs", "Batch API jobs creating, pending or running")
MAX_ACTIVE_JOBS = Gauge("batchyard_max_active_jobs", "BATCHYARD_MAX_ACTIVE_JOBS")
ENQUEUED = Gauge("batchyard_enqueued_tokens", "estimated input tokens of the active jobs")
MAX_ENQUEUED = Gauge("batchyard_max_enqueued_tokens",
                     "BATCHYARD_MAX_ENQUEUED_TOKENS (0: no limit)")
WAITING = Gauge("batchyard_batches_waiting", "batches pending submission")
LAST_FINISHED = Gauge(
    "batchyard_job_last_finished_timestamp_seconds",
    "when a Batch API job last reached a terminal state (before any has: the first job's"
    " creation)")

class Sampler:
    def __init__(self, app: App):
        self.app = app
        self._at = -SAMPLE_EVERY
        self._lock = asyncio.Lock()

    async def refresh(self) -> None:
        """Read every gauge again unless a reading is fresh; a failed reading keeps the
        last values (the pod's counters are still worth serving)."""
        async with self._lock:
            if time.monotonic() - self._at < SAMPLE_EVERY:
                return
            self._at = time.monotonic()
            try:
                async with asyncio.timeout(TIMEOUT):
                    await self._read()
            except Exception as exc:  # any outage: the scrape still answers
                log.warning("metrics.sample_failed", error=repr(exc))

    async def _read(self) -> None:
        app, s = self.app, self.app.settings
        if app.guard.health is None:
            metrics.KEY_STATE.set(-1)  # not yet seen: neither valid nor invalid
        MAX_ACTIVE_JOBS.set(s.max_active_jobs)
        MAX_ENQUEUED.set(s.max_enqueued_tokens)
        PARKED_NOW.set((await app.js.stream_info(defs.BATCH_PARKED)).state.messages)
        for c in defs.CONSUMERS:
            info = await app.js.consumer_info(c.stream, c.name)
            PENDING.labels(c.name).set(info.num_pending or 0)
            ACK_PENDING.labels(c.name).set(info.num_ack_pending or 0)
        gate, _ = await app.quota.read()
        GATE.set(1 if gate is not None and gate.state == "closed" else 0)
        row = await app.store.reports.gauges()
        ACTIVE_JOBS.set(row["jobs"])
        ENQUEUED.set(row["tokens"])
        WAITING.set(row["waiting"])
        if row["last_finished"] is not None:
            LAST_FINISHED.set(float(row["last_finished"]))
