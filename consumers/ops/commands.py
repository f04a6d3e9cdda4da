"""What the operator commands do (`status`, `batches`, `parked`, `dead`, `report`), each
with an App open: the handlers the CLI's subcommands name.

The CLI imports this module at start, so each handler imports what loads the whole
service (the App, the store, the Gemini client) only when its command runs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from consumers.settings import Settings

if TYPE_CHECKING:
    from consumers.app import App

Handler = Callable[[Settings, argparse.Namespace], Coroutine[Any, Any, int]]
Step = Callable[["App", argparse.Namespace], Coroutine[Any, Any, int]]


def with_app(step: Step) -> Handler:
    """The handler that runs `step` with an App open for it."""

    async def handler(settings: Settings, args: argparse.Namespace) -> int:
        from consumers.app import App

        app = await App.open(settings, name="batchyard-cli")
        try:
            return await step(app, args)
        finally:
            await app.close()

    return handler


@with_app
async def status(app: App, args: argparse.Namespace) -> int:
    from consumers.ops import report

    data = await report.status(app)
    if args.json:
        report.emit(data, True, "status")
    else:
        report.print_status(data)
    return 0


@with_app
async def batches_list(app: App, args: argparse.Namespace) -> int:
    from consumers.ops import report

    report.emit(await report.batches(app, args.status, args.limit), args.json, "batches")
    return 0


@with_app
async def batches_show(app: App, args: argparse.Namespace) -> int:
    from consumers.ops import report

    row = await report.batch(app, args.batch_id)
    if row is None:
        print(f"batchyard: no batch {args.batch_id!r}", file=sys.stderr)
        return 1
    report.emit(row, args.json, f"batch {args.batch_id}")
    return 0


@with_app
async def resubmit(app: App, args: argparse.Namespace) -> int:
    from consumers.ops import redrive

    print(await redrive.resubmit(app, args.batch_id, fresh=args.fresh))
    return 0


@with_app
async def retry_failed(app: App, args: argparse.Namespace) -> int:
    from consumers.ops import redrive

    print(await redrive.retry_failed(app, args.batch_id))
    return 0


@with_app
async def cancel(app: App, args: argparse.Namespace) -> int:
    from consumers.ops import redrive

    print(await redrive.cancel(app, args.batch_id))
    return 0


@with_app
async def parked_list(app: App, args: argparse.Namespace) -> int:
    from consumers.ops import report

    report.emit(await report.parked(app), args.json, "parked on batch.auth_failed")
    return 0


@with_app
async def parked_replay(app: App, args: argparse.Namespace) -> int:
    from consumers.ops import report

    print(f"replayed {await report.replay_parked(app, args.batch)} parked messages")
    return 0


@with_app
async def dead_list(app: App, args: argparse.Namespace) -> int:
    from consumers.ops import report

    report.emit(await report.dead(app), args.json, "dead letters")
    return 0


@with_app
async def dead_replay(app: App, args: argparse.Namespace) -> int:
    from consumers.ops import report

    print(await report.replay_dead(app, args.seq))
    return 0


@with_app
async def markdown_report(app: App, args: argparse.Namespace) -> int:
    from consumers.ops import report

    text = await report.report_markdown(app)
    if args.output:
        args.output.write_text(text)
    else:
        print(text, end="")
    return 0
