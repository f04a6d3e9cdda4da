"""Crash points for fault-injection tests: BATCHYARD_FAILPOINTS=name[,name] kills the
process with SIGKILL when it reaches a named point, as a node failure would."""

from __future__ import annotations

import os
import signal

_ARMED = frozenset(filter(None, os.environ.get("BATCHYARD_FAILPOINTS", "").split(",")))


def hit(name: str) -> None:
    if name in _ARMED:
        os.kill(os.getpid(), signal.SIGKILL)
