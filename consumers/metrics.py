"""Prometheus metrics, one registry per process."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

MESSAGES = Counter("batchyard_messages_total", "messages handled", ["role", "outcome"])
GEMINI_CALLS = Counter("batchyard_gemini_calls_total", "Gemini API calls",
                       ["endpoint", "outcome"])
RETRIES = Counter("batchyard_retries_total", "retries scheduled", ["role", "reason"])
PARKED = Counter("batchyard_parked_total", "messages parked on batch.auth_failed", ["stage"])
REPLAYED = Counter("batchyard_replayed_total", "parked messages replayed", ["stage"])
DEAD = Counter("batchyard_dead_total", "messages dead-lettered", ["stage", "reason"])
ITEMS = Counter("batchyard_items_total", "items by outcome", ["outcome"])
BATCH_LATENCY = Histogram(
    "batchyard_batch_seconds", "batch end-to-end latency, created to completed",
    buckets=(1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 12 * 3600, 24 * 3600, 48 * 3600))
KEY_STATE = Gauge("batchyard_key_valid", "1 when the key is known valid, 0 invalid, -1 unknown")
HELD = Counter("batchyard_held_total", "submit messages put back for lack of Batch API room")
GATE_CLOSED = Counter("batchyard_quota_gate_closures_total", "quota gate closures after a 429")
QUOTA_WAIT = Counter("batchyard_quota_wait_seconds_total",
                     "seconds submit pods held off fetching for lack of Batch API room")
JOB_REQUESTS_DONE = Counter(
    "batchyard_job_requests_done_total",
    "requests running Batch API jobs report done (batchStats), counted as polls see them")
ITEMS_REUSED = Counter("batchyard_items_reused_total",
                       "items that cost nothing: a stored vector copied, or a text sent once")
TOKENS_SUBMITTED = Counter("batchyard_tokens_submitted_total",
                           "estimated input tokens sent to Gemini (batch jobs and online)",
                           ["path"])
FILES_SWEPT = Counter("batchyard_files_swept_total", "orphaned input files deleted by the sweep")
