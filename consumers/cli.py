"""The `batchyard` command line."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from consumers.settings import Settings, SettingsError, describe

Handler = Callable[[Settings, argparse.Namespace], Coroutine[Any, Any, int]]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="batchyard",
        description="Gemini Batch API embedding jobs from a NATS JetStream event stream.",
        epilog=describe(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _provisioning(sub)
    _running(sub)
    _reading(sub)
    _letters(sub)
    _local(sub)
    return parser


def _provisioning(sub: Any) -> None:
    """Streams and migrate."""
    streams = sub.add_parser("streams", help="provision JetStream")
    ssub = streams.add_subparsers(dest="action", required=True)
    apply = ssub.add_parser("apply", help="create or update streams, consumers and buckets")
    apply.add_argument("--replicas", type=int, default=1, choices=(1, 3, 5))
    export = ssub.add_parser("export", help="write the nats CLI JSON definitions")
    export.add_argument("directory", type=Path)
    export.add_argument("--replicas", type=int, default=1, choices=(1, 3, 5))

    migrate = sub.add_parser("migrate", help="SQL migrations")
    msub = migrate.add_subparsers(dest="action", required=True)
    msub.add_parser("up", help="apply every pending migration")
    down = msub.add_parser("down", help="revert the newest N migrations")
    down.add_argument("steps", type=int)
    msub.add_parser("status", help="applied version, dirty flag, pending migrations")
    force = msub.add_parser("force", help="record VERSION as applied and clean (-1: none)")
    force.add_argument("version", type=int)


def _running(sub: Any) -> None:
    """Run and publish."""
    run = sub.add_parser("run", help="run consumer roles until SIGTERM")
    run.add_argument("roles", nargs="+", metavar="ROLE",
                     help="submit, poll, key-health, recovery, or all")

    publish = sub.add_parser("publish", help="publish a JSONL file of {id, text} as one batch")
    publish.add_argument("file", type=Path)
    publish.add_argument("--batch-id", required=True)
    publish.add_argument("--model")
    publish.add_argument("--task-type")
    publish.add_argument("--output-dimensionality", type=int)
    publish.add_argument("--source")


def _reading(sub: Any) -> None:
    """Status and batches."""
    status = sub.add_parser("status", help="batches, parked, dead, consumer lag, key health")
    status.add_argument("--json", action="store_true")

    batches = sub.add_parser("batches", help="list or show batches")
    bsub = batches.add_subparsers(dest="action", required=True)
    blist = bsub.add_parser("list")
    blist.add_argument("--status")
    blist.add_argument("--limit", type=int, default=50)
    blist.add_argument("--json", action="store_true")
    bshow = bsub.add_parser("show")
    bshow.add_argument("batch_id")
    bshow.add_argument("--json", action="store_true")
    for action, text in (("resubmit", "embed a finished batch again (new attempt)"),
                         ("retry-failed", "a new attempt with only the failed or dead items"),
                         ("cancel", "cancel its Gemini job and mark it cancelled")):
        bsub.add_parser(action, help=text).add_argument("batch_id")
    bsub.choices["resubmit"].add_argument(
        "--fresh", action="store_true",
        help="send every item to Gemini, copying no stored vector (a model update, a suspect"
             " vector)")


def _letters(sub: Any) -> None:
    """Parked, dead and report."""
    parked = sub.add_parser("parked", help="messages parked on batch.auth_failed")
    psub = parked.add_subparsers(dest="action", required=True)
    psub.add_parser("list").add_argument("--json", action="store_true")
    preplay = psub.add_parser("replay", help="replay parked messages now")
    preplay.add_argument("--batch")

    dead = sub.add_parser("dead", help="dead letters on batch.dead")
    dsub = dead.add_subparsers(dest="action", required=True)
    dsub.add_parser("list").add_argument("--json", action="store_true")
    dreplay = dsub.add_parser("replay", help="publish a dead letter's batch as a new attempt")
    dreplay.add_argument("seq", type=int, metavar="ID", help="the dead letter's BATCH sequence")

    report = sub.add_parser("report", help="a run summary")
    report.add_argument("--markdown", action="store_true", required=True,
                        help="write it as Markdown (the only format)")
    report.add_argument("--output", type=Path, help="file to write (default: stdout)")


def _local(sub: Any) -> None:
    """Emulator, demo, dev and asyncapi."""
    emulator = sub.add_parser("emulator", help="the Gemini API emulator alone")
    emulator.add_argument("args", nargs=argparse.REMAINDER)

    sub.add_parser("demo", help="the whole system on this machine")
    dev = sub.add_parser("dev", help="a local stack that stays up until Ctrl-C, data kept")
    dev.add_argument("--dir", type=Path, default=Path(".batchyard"),
                     help="where the servers keep their data and ports (default .batchyard)")
    dev.add_argument("--fresh", action="store_true", help="remove the kept data first")
    dev.add_argument("--real", action="store_true",
                     help="the real Gemini API with GEMINI_API_KEY instead of the emulator")
    asyncapi = sub.add_parser("asyncapi", help="print the event API as an AsyncAPI 3.0 document")
    asyncapi.add_argument("--schemas", type=Path, metavar="DIR",
                          help="also write each payload's JSON Schema into DIR")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["emulator"]:
        from sandbox.emulator import main as emulator_main

        return emulator_main(argv[1:])
    args = _parser().parse_args(argv)
    if args.command == "asyncapi":  # needs no settings: it describes, connects to nothing
        from events.asyncapi import write

        return write(args.schemas)
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"batchyard: bad setting: {exc}", file=sys.stderr)
        return 2
    handler = _HANDLERS[args.command]
    from consumers.natsauth import StartupError

    try:
        factory = _loop_factory() if args.command == "run" else None
        with asyncio.Runner(loop_factory=factory) as runner:
            return runner.run(handler(settings, args))
    except KeyboardInterrupt:
        return 130
    except StartupError as exc:
        print(f"batchyard: {exc}", file=sys.stderr)
        return 3


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop where it is installed: it spends a fraction of asyncio's CPU
    on each callback and socket event, much of a pod's work. Pods only: the commands
    that start servers need `user=` for subprocesses, which uvloop does not take."""
    try:
        import uvloop
    except ImportError:  # no wheel for this platform: asyncio's own loop
        return None
    return uvloop.new_event_loop


async def _streams(settings: Settings, args: argparse.Namespace) -> int:
    from consumers.ops import provision

    if args.action == "export":
        for path in provision.export(args.directory, args.replicas):
            print(path)
        return 0
    from consumers.connect import connect_nats

    nc = await connect_nats(settings, max_reconnect_attempts=3)
    try:
        changed = await provision.apply(nc.jetstream(), args.replicas)
    finally:
        await nc.close()
    print("\n".join(changed) if changed else "streams: up to date")
    return 0


async def _migrate(settings: Settings, args: argparse.Namespace) -> int:
    import asyncpg

    from consumers.store.migrate import MigrationError, Migrator

    conn = await asyncpg.connect(settings.database_url, timeout=10)
    try:
        migrator = Migrator(conn)
        if args.action == "up":
            applied = await migrator.up()
            print(f"applied {applied}" if applied else "migrations: up to date")
        elif args.action == "down":
            print(f"reverted {await migrator.down(args.steps)}")
        elif args.action == "force":
            await migrator.force(args.version)
            print(f"version forced to {args.version}")
        else:
            print(json.dumps(await migrator.status()))
    except MigrationError as exc:
        print(f"batchyard: {exc}", file=sys.stderr)
        return 1
    except asyncpg.InsufficientPrivilegeError as exc:
        print(f"batchyard: {exc} (migrations run as the owner role)", file=sys.stderr)
        return 1
    finally:
        await conn.close()
    return 0


async def _demo(settings: Settings, args: argparse.Namespace) -> int:
    from consumers.ops.demo import run_demo

    return await run_demo(settings)


async def _dev(settings: Settings, args: argparse.Namespace) -> int:
    from consumers.ops.dev import run_dev

    return await run_dev(settings, args)


async def _run(settings: Settings, args: argparse.Namespace) -> int:
    from consumers.pod import role_names, run_roles

    try:
        names = role_names(args.roles)
    except ValueError as exc:
        print(f"batchyard: {exc}", file=sys.stderr)
        return 2
    return await run_roles(settings, names)


async def _publish(settings: Settings, args: argparse.Namespace) -> int:
    from consumers.ops.producer import publish_file
    from events.payloads import InvalidMessage

    try:
        print(await publish_file(settings, args))
    except (InvalidMessage, OSError) as exc:
        print(f"batchyard: {exc}", file=sys.stderr)
        return 1
    return 0


async def _ops(settings: Settings, args: argparse.Namespace) -> int:
    from consumers.app import App
    from consumers.ops import report as ops

    app = await App.open(settings, name="batchyard-cli")
    try:
        as_json = getattr(args, "json", False)
        if args.command == "status":
            data = await ops.status(app)
            if as_json:
                ops.emit(data, True, "status")
            else:
                ops.print_status(data)
        elif args.command == "batches" and args.action == "list":
            ops.emit(await ops.batches(app, args.status, args.limit), as_json, "batches")
        elif args.command == "batches" and args.action != "show":
            from consumers.ops import redrive

            if args.action == "resubmit":
                print(await redrive.resubmit(app, args.batch_id, fresh=args.fresh))
            else:
                act = {"retry-failed": redrive.retry_failed, "cancel": redrive.cancel}
                print(await act[args.action](app, args.batch_id))
        elif args.command == "batches":
            row = await ops.batch(app, args.batch_id)
            if row is None:
                print(f"batchyard: no batch {args.batch_id!r}", file=sys.stderr)
                return 1
            ops.emit(row, as_json, f"batch {args.batch_id}")
        elif args.command == "parked" and args.action == "list":
            ops.emit(await ops.parked(app), as_json, "parked on batch.auth_failed")
        elif args.command == "parked":
            print(f"replayed {await ops.replay_parked(app, args.batch)} parked messages")
        elif args.command == "report":
            text = await ops.report_markdown(app)
            if args.output:
                args.output.write_text(text)
            else:
                print(text, end="")
        elif args.command == "dead" and args.action == "list":
            ops.emit(await ops.dead(app), as_json, "dead letters")
        else:
            print(await ops.replay_dead(app, args.seq))
    finally:
        await app.close()
    return 0


_HANDLERS: dict[str, Handler] = {
    "status": _ops,
    "batches": _ops,
    "parked": _ops,
    "dead": _ops,
    "report": _ops,
    "run": _run,
    "publish": _publish,
    "streams": _streams,
    "migrate": _migrate,
    "demo": _demo,
    "dev": _dev,
}
