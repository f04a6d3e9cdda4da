"""The emulator in a subprocess, for tests that block their own event loop (sync clients)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager

from sandbox import _proc

from .admin_client import AdminClient

START_TIMEOUT_S = 10.0


class EmulatorProcess(AdminClient):
    """A running emulator subprocess: `.url`, `.process` and the admin helpers."""

    def __init__(self, url: str, process: asyncio.subprocess.Process) -> None:
        super().__init__(url)
        self.process = process


def _argv(keys: Iterable[str], options: dict[str, object]) -> list[str]:
    argv = [sys.executable, "-m", "sandbox.emulator", "--host", "127.0.0.1"]
    options.setdefault("port", 0)
    for key in keys:
        argv += ["--key", key]
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if value is True:
            argv.append(flag)
        elif value is not False and value is not None:
            argv += [flag, str(value)]
    return argv


@asynccontextmanager
async def launch_emulator(
    keys: Iterable[str] = (), **cli_options: object
) -> AsyncIterator[EmulatorProcess]:
    """Start `python -m sandbox.emulator` with `--key` per key and `--<option> value`.

    The process is stopped and reaped on exit, on error and on cancellation.
    """
    process = await _proc.spawn(
        _argv(keys, dict(cli_options)), stdout=asyncio.subprocess.PIPE, stderr=None
    )
    handle: EmulatorProcess | None = None
    try:
        assert process.stdout is not None
        try:
            line = await asyncio.wait_for(process.stdout.readline(), START_TIMEOUT_S)
        except TimeoutError:
            raise RuntimeError("the emulator did not report its URL in time") from None
        url = line.decode().strip()
        if not url.startswith("http"):
            raise RuntimeError(f"the emulator failed to start (exit {await process.wait()})")
        handle = EmulatorProcess(url, process)
        yield handle
    finally:
        if handle is not None:
            await handle.close_admin()
        await _proc.stop(process, timeout=5.0)
