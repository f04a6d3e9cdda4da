"""Child processes that die with their parent and are always reaped."""

from __future__ import annotations

import asyncio
import ctypes
import os
import signal
import socket
from collections.abc import Callable, Sequence

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    # A test runner killed with -9 must not leave servers behind.
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


def preexec() -> Callable[[], None]:
    return _die_with_parent


def free_port(host: str = "127.0.0.1") -> int:
    """A port free right now on `host` (the caller binds it soon after)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


async def spawn(
    argv: Sequence[str], *, user: str | None = None, env: dict[str, str] | None = None,
    stdout: int | None = asyncio.subprocess.DEVNULL, stderr: int | None = asyncio.subprocess.PIPE,
) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=stdout,
        stderr=stderr,
        user=user,
        env=env,
        preexec_fn=_die_with_parent,
        start_new_session=True,
    )


async def stop(proc: asyncio.subprocess.Process, sig: int = signal.SIGTERM,
               timeout: float = 10.0) -> None:
    """Signal `proc`, wait up to `timeout`, then kill it; always reaps."""
    if proc.returncode is None:
        try:
            proc.send_signal(sig)
        except ProcessLookupError:
            pass
        try:
            await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            kill(proc)
            await proc.wait()
        except asyncio.CancelledError:
            kill(proc)
            raise


def kill(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        try:
            os.kill(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
