"""Batch jobs: their timeline on the emulator clock, their results, their Operation JSON."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import embed
from .catalogue import Model
from .inputs import Item
from .wire import timestamp

PENDING = "BATCH_STATE_PENDING"
RUNNING = "BATCH_STATE_RUNNING"
# Between a cancel and CANCELLED (GEMINI_API.md §9.4, in the SDK's JOB_STATE_CANCELLING
# spelling). The Batch API speaks BATCH_STATE_* on the wire where the docs and the SDK say
# JOB_STATE_* (googleapis/python-genai#1297: "BATCH_STATE_RUNNING is not a valid JobState";
# googleapis/java-genai#498: BATCH_STATE_RUNNING and _EXPIRED were not mapped), and
# third-party Gemini batch clients map this very name. google-genai 3.6.1
# `_transformers.t_job_state` (like js-genai `tJobState`) has no case for it, so it passes
# through: `BatchJob.state` is an ad-hoc JobState whose value is "BATCH_STATE_CANCELLING",
# not JobState.JOB_STATE_CANCELLING, and a UserWarning says it "is not a valid JobState".
CANCELLING = "BATCH_STATE_CANCELLING"
SUCCEEDED = "BATCH_STATE_SUCCEEDED"
FAILED = "BATCH_STATE_FAILED"
CANCELLED = "BATCH_STATE_CANCELLED"
EXPIRED = "BATCH_STATE_EXPIRED"
TERMINAL = frozenset({SUCCEEDED, FAILED, CANCELLED, EXPIRED})
# A job pending or running longer than this ends EXPIRED with no results (GEMINI_API.md §9.4).
MAX_LIFETIME_S = 48 * 3600.0

_END_STATE = {"succeeded": SUCCEEDED, "failed": FAILED, "cancelled": CANCELLED,
              "expired": EXPIRED}
# google.rpc.Status of an operation that did not succeed (gRPC codes, as LROs carry).
_OPERATION_ERRORS = {
    FAILED: {"code": 13, "message": "Batch failed due to an internal error."},
    CANCELLED: {"code": 1, "message": "Batch was cancelled."},
    EXPIRED: {"code": 4, "message": "Batch expired before it could be processed."},
}
_BATCH_TYPE = "type.googleapis.com/google.ai.generativelanguage.v1main.EmbedContentBatch"
_OUTPUT_TYPE = "type.googleapis.com/google.ai.generativelanguage.v1main.EmbedContentBatchOutput"
ITEM_FAULT = {"code": 500, "message": "Internal error encountered.", "status": "INTERNAL"}


@dataclass(kw_only=True)
class Job:
    """One embeddings batch; its fate (outcome, timings, RNG seed) is fixed at creation."""

    id: str
    seq: int
    model: Model
    display_name: str | None
    key: str
    items: list[Item]
    input_config: dict[str, Any]
    input_file: str | None
    created: float
    pending_s: float
    running_s: float
    outcome: str
    seed: int
    item_error_rate: float
    bad_vector: str | None
    bad_vector_rate: float
    est_tokens: int
    shuffle_inline_over: int | None = None
    final_state: str | None = None
    ended: float | None = None
    output_file: str | None = None
    inline_output: list[dict[str, Any]] | None = None
    failed_items: int = 0
    cancel_asked: float | None = None
    cancel_done: float | None = None  # when a cancelling job turns CANCELLED

    @property
    def name(self) -> str:
        """`batches/<id>`."""
        return f"batches/{self.id}"

    def fate(self) -> tuple[float, str] | None:
        """When the job turns terminal by itself and in which state; None once it has."""
        if self.final_state is not None:
            return None
        expires = self.created + MAX_LIFETIME_S
        if self.cancel_done is not None:
            # A cancelling job ends CANCELLED, never SUCCEEDED, unless it expires first.
            if self.cancel_done <= expires:
                return self.cancel_done, CANCELLED
            return expires, EXPIRED
        if self.outcome == "never":
            return expires, EXPIRED
        ends = self.created + self.pending_s + self.running_s
        if ends > expires:
            return expires, EXPIRED
        return ends, _END_STATE[self.outcome]

    def end_state(self) -> str:
        """The terminal state this job reaches by itself when it is due."""
        fate = self.fate()
        if fate is None:
            raise ValueError(f"{self.name} is already {self.final_state}")
        return fate[1]

    def state_at(self, now: float) -> str:
        """The BATCH_STATE_* at emulator time `now`."""
        if self.final_state is not None:
            return self.final_state
        # A job turns terminal only in Project.tick(), which writes its output at the
        # same moment: reading the clock twice must never show SUCCEEDED with no output.
        if self.cancel_asked is not None and now >= self.cancel_asked:
            return CANCELLING
        if now < self.created + self.pending_s or self.outcome == "expired":
            return PENDING
        return RUNNING

    def cancel(self, now: float, takes_s: float) -> None:
        """Start cancelling at `now`; CANCELLED `takes_s` later. A second cancel changes
        nothing."""
        if self.final_state is None and self.cancel_asked is None:
            self.cancel_asked = now
            self.cancel_done = now + takes_s

    def end(self, state: str, at: float) -> None:
        """Make the job terminal in `state` at time `at`."""
        self.final_state = state
        self.ended = at

    def _updated(self, now: float) -> float:
        if self.ended is not None:
            return self.ended
        state = self.state_at(now)
        if state == CANCELLING and self.cancel_asked is not None:
            return self.cancel_asked
        if state == RUNNING:
            return self.created + self.pending_s
        return self.created

    def _done_by(self, moment: float) -> int:
        """Requests a running job has done by `moment`: they rise with its running time."""
        start = self.created + self.pending_s
        if self.outcome == "expired" or moment <= start or self.running_s <= 0:
            return 0
        return min(len(self.items), int(len(self.items) * (moment - start) / self.running_s))

    def operation(self, now: float, wall: Callable[[float], float]) -> dict[str, Any]:
        """The google.longrunning Operation the API answers for this job."""
        state = self.state_at(now)
        count = len(self.items)
        stats = {"requestCount": str(count)}
        if state == SUCCEEDED:
            stats["successfulRequestCount"] = str(count - self.failed_items)
            stats["failedRequestCount"] = str(self.failed_items)
        elif state in (RUNNING, CANCELLING):
            # The real API's counts rise while a job runs (GEMINI_API.md §9); a cancel
            # stops them where they were.
            done = self._done_by(now if self.cancel_asked is None else self.cancel_asked)
            stats["successfulRequestCount"] = str(done)
            stats["pendingRequestCount"] = str(count - done)
        elif state not in TERMINAL:
            stats["pendingRequestCount"] = str(count)
        metadata: dict[str, Any] = {"@type": _BATCH_TYPE, "name": self.name,
                                    "model": self.model.name}
        if self.display_name is not None:
            metadata["displayName"] = self.display_name
        metadata |= {
            "inputConfig": self.input_config,
            "createTime": timestamp(wall(self.created)),
            "updateTime": timestamp(wall(self._updated(now))),
            "batchStats": stats,
            "state": state,
        }
        if self.ended is not None:
            metadata["endTime"] = timestamp(wall(self.ended))
        operation: dict[str, Any] = {"name": self.name, "metadata": metadata}
        if state == SUCCEEDED:
            output = self._output()
            metadata["output"] = output
            operation |= {"done": True, "response": {"@type": _OUTPUT_TYPE, **output}}
        elif state in TERMINAL:
            operation |= {"done": True, "error": _OPERATION_ERRORS[state]}
        return operation

    def _output(self) -> dict[str, Any]:
        if self.output_file is not None:
            return {"responsesFile": self.output_file}
        return {"inlinedResponses": {"inlinedResponses": self.inline_output or []}}


def run(job: Job) -> list[dict[str, Any]]:
    """Each item's result, in input order: `{"response": ...}` or `{"error": ...}`."""
    rng = random.Random(job.seed)

    def chance(rate: float) -> bool:
        return rate >= 1.0 or (rate > 0.0 and rng.random() < rate)

    results: list[dict[str, Any]] = []
    for item in job.items:
        if item.problem is not None:
            results.append({"error": {"code": 400, "message": item.problem,
                                      "status": "INVALID_ARGUMENT"}})
        elif chance(job.item_error_rate):
            results.append({"error": dict(ITEM_FAULT)})
        else:
            values = embed.vector(job.model.id, item.text, item.dims)
            if job.bad_vector is not None and chance(job.bad_vector_rate):
                results.append({"response": {"embedding": {
                    "values": embed.corrupt(values, job.bad_vector)}}})
            else:
                results.append({"response": {"embedding": {"values": values}}})
    return results


def file_lines(job: Job, results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Output file lines: each result with its request's key first."""
    lines = []
    for item, result in zip(job.items, results, strict=True):
        lines.append(result if item.key is None else {"key": item.key, **result})
    return lines


def inline_items(job: Job, results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Inline responses, each with its request's metadata; errors carry code and message
    only (the SDK types them so). Past `shuffle_inline_over` requests they come in an
    order of their own, seeded by the job (GEMINI_API.md §9.2)."""
    items = []
    for item, result in zip(job.items, results, strict=True):
        error = result.get("error")
        if error is not None:
            result = {"error": {"code": error["code"], "message": error["message"]}}
        items.append(result if item.metadata is None else {**result, "metadata": item.metadata})
    if job.shuffle_inline_over and len(items) > job.shuffle_inline_over:
        random.Random(job.seed + 1).shuffle(items)  # not run()'s stream of draws
    return items
