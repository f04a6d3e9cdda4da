"""Everything the emulator remembers: keys, call counts, faults, files, jobs, the clock."""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict
from typing import Any

from . import errors, jobs
from .catalogue import Model
from .clock import Clock
from .faults import Dice, Faults, to_json
from .filestore import FileStore, random_id
from .inputs import Item
from .wire import dumps

KEY_STATES = ("valid", "expired", "invalid", "revoked")


class EmulatorState:
    """The in-memory project every request reads and changes (one event loop, no locks)."""

    def __init__(
        self, *, keys: dict[str, str] | None = None, pending_s: float = 0.5,
        running_s: float = 1.0,
    ) -> None:
        self.clock = Clock()
        self.keys: dict[str, str] = dict(keys or {})
        self.calls: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self.files = FileStore()
        self.jobs: dict[str, jobs.Job] = {}
        self.pending_s = pending_s
        self.running_s = running_s
        self._job_seq = itertools.count(1)
        self.injected: Counter[str] = Counter()  # 429s and 5xx answered by fault, for reports
        self.tokens: Counter[str] = Counter()  # estimated tokens embedded: online, batch
        self.set_faults(Faults(job_pending_s=pending_s, job_running_s=running_s))

    # keys and calls

    def key_state(self, key: str) -> str:
        """valid, expired, invalid or revoked; a key never seen is invalid."""
        return self.keys.get(key, "invalid")

    def set_key(self, key: str, state: str) -> None:
        """Add or change a key."""
        if state not in KEY_STATES:
            raise errors.invalid_argument(f"state must be one of {', '.join(KEY_STATES)}")
        self.keys[key] = state

    def count(self, key: str, endpoint: str) -> None:
        """Record one API call with `key` (as sent, "" when none) on `endpoint`."""
        self.calls[key][endpoint] += 1

    # faults

    def set_faults(self, faults: Faults) -> None:
        """Replace the whole fault set; counters and the RNG start afresh."""
        self.faults = faults
        self.dice = Dice(faults.seed)
        self.burst_left = faults.rate_limit_burst
        self.create_429_until = self.clock.now() + faults.create_429_for_s

    def call_fault(self, model: str) -> errors.ApiError | None:
        """The injected 429 or 5xx this API call gets, if any."""
        faults = self.faults
        if self.burst_left > 0:
            self.burst_left -= 1
            self.injected["429"] += 1
            return errors.rate_limited(faults.retry_delay_s, model)
        if self.dice.chance(faults.rate_limit_rate):
            self.injected["429"] += 1
            return errors.rate_limited(faults.retry_delay_s, model)
        if self.dice.chance(faults.error_rate):
            self.injected["5xx"] += 1
            return errors.server_error(self.dice.choice(faults.error_codes))
        return None

    # jobs

    def tick(self) -> None:
        """Bring every job up to the clock: finish those whose time has come."""
        now = self.clock.now()
        for job in list(self.jobs.values()):
            fate = job.fate()
            if fate is not None and now >= fate[0]:
                self._finish(job, *fate)

    def _finish(self, job: jobs.Job, at: float, state: str) -> None:
        if state == jobs.SUCCEEDED:
            results = jobs.run(job)
            job.failed_items = sum(1 for result in results if "error" in result)
            if job.input_file is not None:
                data = b"".join(dumps(line) + b"\n" for line in jobs.file_lines(job, results))
                stored = self.files.add_generated(f"batch-{job.id}", data, now=at, key=job.key)
                job.output_file = stored.name
            else:
                job.inline_output = jobs.inline_items(job, results)
        job.end(state, at)

    def active_jobs(self) -> list[jobs.Job]:
        """Jobs not yet terminal."""
        now = self.clock.now()
        return [job for job in self.jobs.values() if job.state_at(now) not in jobs.TERMINAL]

    def admit(self, model: Model, est_tokens: int) -> None:
        """Raise the 429 a batch create gets when a quota fault says no room."""
        faults = self.faults
        if self.clock.now() < self.create_429_until:
            raise errors.quota_exhausted()
        active = self.active_jobs()
        if faults.max_active_jobs is not None and len(active) >= faults.max_active_jobs:
            raise errors.quota_exhausted()
        if faults.max_job_tokens is not None and est_tokens > faults.max_job_tokens:
            raise errors.enqueued_tokens_exhausted(model.name, faults.max_job_tokens)
        if faults.max_enqueued_tokens is not None:
            enqueued = sum(job.est_tokens for job in active if job.model == model)
            if enqueued + est_tokens > faults.max_enqueued_tokens:
                raise errors.enqueued_tokens_exhausted(model.name, faults.max_enqueued_tokens)

    def create_job(
        self, *, model: Model, items: list[Item], display_name: str | None, key: str,
        input_config: dict[str, Any], input_file: str | None, est_tokens: int,
    ) -> jobs.Job:
        """A new job whose outcome, timings and item faults are drawn now."""
        faults = self.faults
        outcome = "succeeded"
        if faults.job_outcome is not None and self.dice.chance(faults.job_outcome_rate):
            outcome = faults.job_outcome
        while (job_id := random_id(36)) in self.jobs:
            pass
        job = jobs.Job(
            id=job_id, seq=next(self._job_seq), model=model, display_name=display_name,
            key=key, items=items, input_config=input_config, input_file=input_file,
            created=self.clock.now(),
            pending_s=self.pending_s if faults.job_pending_s is None else faults.job_pending_s,
            running_s=self.running_s if faults.job_running_s is None else faults.job_running_s,
            outcome=outcome, seed=self.dice.seed(), item_error_rate=faults.item_error_rate,
            bad_vector=faults.bad_vector, bad_vector_rate=faults.bad_vector_rate,
            est_tokens=est_tokens, shuffle_inline_over=faults.shuffle_inline_over,
        )
        self.jobs[job.id] = job
        self.tokens["batch"] += est_tokens
        return job

    def job(self, job_id: str) -> jobs.Job:
        """The job, or 404."""
        job = self.jobs.get(job_id)
        if job is None:
            raise errors.not_found()
        return job

    def cancel(self, job_id: str) -> None:
        """Start cancelling a job that is not yet terminal: it is CANCELLING for the
        `cancel_s` fault, then CANCELLED. A terminal one stays as it is."""
        job = self.job(job_id)
        job.cancel(self.clock.now(), self.faults.cancel_s)
        self.tick()

    def listing(self) -> list[jobs.Job]:
        """All jobs, newest first."""
        return sorted(self.jobs.values(), key=lambda job: job.seq, reverse=True)

    # admin view

    def snapshot(self) -> dict[str, Any]:
        """What GET /_emulator/state shows."""
        now = self.clock.now()
        return {
            "now": now,
            "keys": dict(self.keys),
            "calls": {key: dict(counter) for key, counter in self.calls.items()},
            "files": [
                {"name": f.name, "display_name": f.display_name, "mime_type": f.mime_type,
                 "size_bytes": len(f.data), "source": f.source, "key": f.key}
                for f in self.files.listing()
            ],
            "jobs": [
                {"name": job.name, "display_name": job.display_name, "model": job.model.name,
                 "state": job.state_at(now), "est_tokens": job.est_tokens,
                 "request_count": len(job.items), "input_file": job.input_file,
                 "output_file": job.output_file, "key": job.key,
                 "failed_requests": job.failed_items, "created": job.created,
                 "ended": job.ended}
                for job in self.listing()
            ],
            "faults": to_json(self.faults),
            "injected": dict(self.injected),
            "tokens": {"online": self.tokens["online"], "batch": self.tokens["batch"]},
        }
