"""How big each scenario runs: `short` for CI, `full` for `make chaos`."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Profile:
    name: str
    batches: int  # good batches in most scenarios
    kill_batches: int  # batches of the kill -9 run
    kill_every: float  # seconds between two kills
    kill_span: float  # seconds the kill run's publishing is spread over
    hostile: int  # malformed and hostile messages in the property-based stream
    good_every: int  # one good batch per this many hostile messages
    drain_timeout: float  # bound on the wait for every batch to settle
    max_items: int  # the largest ordinary batch
    bursts: int  # bursts of 429s in emulator_faults, one every 4 s

    @property
    def scenario_timeout(self) -> float:
        """Bound on one whole scenario, setup and teardown included."""
        return self.drain_timeout + 240.0


PROFILES = {
    "short": Profile(name="short", batches=36, kill_batches=80, kill_every=3.0, kill_span=30.0, hostile=10_000,
                     good_every=250, drain_timeout=150.0, max_items=40, bursts=5),
    "full": Profile(name="full", batches=300, kill_batches=1000, kill_every=3.0, kill_span=120.0, hostile=12_000,
                    good_every=60, drain_timeout=900.0, max_items=60, bursts=20),
}


def current() -> Profile:
    """The profile CHAOS_PROFILE names (short when unset)."""
    name = os.environ.get("CHAOS_PROFILE", "short")
    try:
        return PROFILES[name]
    except KeyError:
        raise SystemExit(f"CHAOS_PROFILE={name!r}: one of {', '.join(PROFILES)}") from None
