"""The emulator's clock: monotonic time plus an offset that only moves forward."""

from __future__ import annotations

import time


class Clock:
    """Seconds on the job clock; `advance` moves it ahead of real time."""

    def __init__(self) -> None:
        self._offset = 0.0
        self._mono0 = time.monotonic()
        self._wall0 = time.time()

    def now(self) -> float:
        """The current emulator time."""
        return time.monotonic() + self._offset

    def advance(self, seconds: float) -> float:
        """Move the clock `seconds` ahead; returns the new time."""
        self._offset += seconds
        return self.now()

    def wall(self, moment: float) -> float:
        """Unix time of emulator time `moment`, for timestamps on the wire."""
        return self._wall0 + (moment - self._mono0)
