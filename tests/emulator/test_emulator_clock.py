"""A job is terminal only once its output exists, however the clock is read."""

from __future__ import annotations

from sandbox.emulator import jobs
from sandbox.emulator.catalogue import MODELS
from sandbox.emulator.inputs import Item


def _job() -> jobs.Job:
    return jobs.Job(id="a" * 36, seq=1, model=MODELS[0], display_name="b:0", key="k",
                    items=[Item(key=None, text="t", dims=4)], input_config={}, input_file=None,
                    created=0.0, pending_s=1.0, running_s=1.0, outcome="succeeded", seed=1,
                    item_error_rate=0.0, bad_vector=None, bad_vector_rate=1.0, est_tokens=1)


def test_past_due_but_not_finished_is_still_running() -> None:
    """Read after its due time but before tick(), a job shows RUNNING and no output."""
    job = _job()
    assert job.state_at(0.5) == jobs.PENDING
    assert job.state_at(1.5) == jobs.RUNNING
    assert job.state_at(99.0) == jobs.RUNNING
    assert "output" not in job.operation(99.0, lambda t: t)["metadata"]
    job.inline_output = [{"response": {"embedding": {"values": [1.0, 0, 0, 0]}}}]
    job.end(job.end_state(), 2.0)
    assert job.state_at(99.0) == jobs.SUCCEEDED
    assert job.operation(99.0, lambda t: t)["metadata"]["output"]
