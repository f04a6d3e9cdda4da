"""`python -m sandbox.emulator` and `batchyard emulator`: serve until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys

from .server import Emulator


def parser() -> argparse.ArgumentParser:
    """The command line of the emulator."""
    cli = argparse.ArgumentParser(
        prog="batchyard emulator", description="Gemini API emulator (files, batches, models)."
    )
    cli.add_argument("--host", default="127.0.0.1", help="address to listen on")
    cli.add_argument("--port", type=int, default=0, help="port to listen on; 0 picks a free one")
    cli.add_argument("--key", action="append", default=[], metavar="KEY",
                     help="a valid API key (repeatable)")
    cli.add_argument("--job-pending-s", type=float, default=0.5, metavar="S",
                     help="seconds a new job stays PENDING (default 0.5)")
    cli.add_argument("--job-running-s", type=float, default=1.0, metavar="S",
                     help="seconds a job stays RUNNING (default 1.0)")
    cli.add_argument("--verbose", action="store_true", help="log every request to stderr")
    return cli


async def serve(args: argparse.Namespace) -> None:
    """Run the emulator, print its URL once listening, stop on SIGINT/SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with Emulator(
        host=args.host, port=args.port, keys=args.key, job_pending_s=args.job_pending_s,
        job_running_s=args.job_running_s, access_log=args.verbose,
    ) as emulator:
        print(emulator.url, flush=True)
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    args = parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        stream=sys.stderr,
        format="%(asctime)s %(name)s %(message)s",
    )
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args))
    return 0
