"""Injected faults: the set PUT /_emulator/faults replaces, and the dice that apply it."""

from __future__ import annotations

import random
from typing import Any, Literal

import msgspec

from .errors import SERVER_ERRORS

# "never": the job does not finish by itself, so it expires at 48 h like any other.
JobOutcome = Literal["failed", "cancelled", "expired", "never"]
BadVector = Literal["wrong_length", "nan", "zeros"]

_RATES = ("error_rate", "rate_limit_rate", "job_outcome_rate", "item_error_rate", "bad_vector_rate",
          "create_lost_rate")
_NON_NEGATIVE = (
    "retry_delay_s", "rate_limit_burst", "latency_ms", "download_latency_ms",
    "job_pending_s", "job_running_s", "max_active_jobs", "max_job_tokens",
    "max_enqueued_tokens", "create_429_for_s", "shuffle_inline_over", "cancel_s",
)


class Faults(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Every fault knob; a field left out of a PUT goes back to its default."""

    error_rate: float = 0.0
    error_codes: list[int] = msgspec.field(default_factory=lambda: [500, 503])
    rate_limit_rate: float = 0.0
    retry_delay_s: float = 1.0
    rate_limit_burst: int = 0
    latency_ms: float = 0.0
    download_latency_ms: float = 0.0
    job_outcome: JobOutcome | None = None
    job_outcome_rate: float = 1.0
    job_pending_s: float | None = None
    job_running_s: float | None = None
    # Emulator seconds a cancelled job spends in BATCH_STATE_CANCELLING before CANCELLED.
    cancel_s: float = 0.5
    item_error_rate: float = 0.0
    bad_vector: BadVector | None = None
    bad_vector_rate: float = 1.0
    seed: int | None = None
    max_active_jobs: int | None = None
    max_job_tokens: int | None = None
    max_enqueued_tokens: int | None = None
    create_429_for_s: float = 0.0
    # An accepted batch create makes its job, then answers 503: the lost answer after
    # which a retried create would pay for a second job.
    create_lost_rate: float = 0.0
    online_drop_one: bool = False  # batchEmbedContents answers one embedding too few
    # An inline job of more requests than this answers them shuffled, as the real API
    # does past about a thousand (GEMINI_API.md §9.2); 0 or null never shuffles.
    shuffle_inline_over: int | None = 600

    def __post_init__(self) -> None:
        for name in _RATES:
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1")
        for name in _NON_NEGATIVE:
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must not be negative")
        if not self.error_codes or any(code not in SERVER_ERRORS for code in self.error_codes):
            raise ValueError(f"error_codes must be a non-empty list of {sorted(SERVER_ERRORS)}")


def parse(body: bytes, *, pending_s: float, running_s: float) -> Faults:
    """Faults from a PUT body; job timings left out take the emulator's defaults."""
    faults = msgspec.json.decode(body or b"{}", type=Faults)
    return msgspec.structs.replace(
        faults,
        job_pending_s=pending_s if faults.job_pending_s is None else faults.job_pending_s,
        job_running_s=running_s if faults.job_running_s is None else faults.job_running_s,
    )


def to_json(faults: Faults) -> dict[str, Any]:
    """The fault set as GET /_emulator/faults shows it."""
    result: dict[str, Any] = msgspec.to_builtins(faults)
    return result


class Dice:
    """The fault RNG; seeded by the `seed` fault for repeatable runs."""

    def __init__(self, seed: int | None) -> None:
        self._rng = random.Random(seed)

    def chance(self, rate: float) -> bool:
        """True with probability `rate` (0 never, 1 always)."""
        return rate >= 1.0 or (rate > 0.0 and self._rng.random() < rate)

    def choice(self, options: list[int]) -> int:
        """One of `options`."""
        return self._rng.choice(options)

    def seed(self) -> int:
        """A fresh seed for a job's own RNG."""
        return self._rng.getrandbits(64)
