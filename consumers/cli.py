"""The `batchyard` command line: each subcommand's parser names its handler."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from consumers.ops import commands
from consumers.settings import Settings, SettingsError, describe

if TYPE_CHECKING:
    from consumers.store.migrate import Migrator

Handler = commands.Handler
MigrationStep = Callable[["Migrator", argparse.Namespace], Coroutine[Any, Any, str]]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="batchyard",
        description="Gemini Batch API embedding jobs from a NATS JetStream event stream.",
        epilog=describe(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    # `offline`: a command that needs no settings and connects to nothing; `pod`: one
    # that runs roles (uvloop's loop).
    parser.set_defaults(offline=None, pod=False)
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
    apply.set_defaults(handler=_streams_apply)
    export = ssub.add_parser("export", help="write the nats CLI JSON definitions")
    export.add_argument("directory", type=Path)
    export.add_argument("--replicas", type=int, default=1, choices=(1, 3, 5))
    export.set_defaults(handler=_streams_export)

    migrate = sub.add_parser("migrate", help="SQL migrations")
    msub = migrate.add_subparsers(dest="action", required=True)
    msub.add_parser("up", help="apply every pending migration").set_defaults(
        handler=_migration(_migrate_up))
    down = msub.add_parser("down", help="revert the newest N migrations")
    down.add_argument("steps", type=int)
    down.set_defaults(handler=_migration(_migrate_down))
    msub.add_parser("status", help="applied version, dirty flag, pending migrations"
                    ).set_defaults(handler=_migration(_migrate_status))
    force = msub.add_parser("force", help="record VERSION as applied and clean (-1: none)")
    force.add_argument("version", type=int)
    force.set_defaults(handler=_migration(_migrate_force))


def _running(sub: Any) -> None:
    """Run and publish."""
    run = sub.add_parser("run", help="run consumer roles until SIGTERM")
    run.add_argument("roles", nargs="+", metavar="ROLE",
                     help="submit, poll, key-health, recovery, or all")
    run.set_defaults(handler=_run, pod=True)

    publish = sub.add_parser("publish", help="publish a JSONL file of {id, text} as one batch")
    publish.add_argument("file", type=Path)
    publish.add_argument("--batch-id", required=True)
    publish.add_argument("--model")
    publish.add_argument("--task-type")
    publish.add_argument("--output-dimensionality", type=int)
    publish.add_argument("--source")
    publish.set_defaults(handler=_publish)


def _reading(sub: Any) -> None:
    """Status and batches."""
    status = sub.add_parser("status", help="batches, parked, dead, consumer lag, key health")
    status.add_argument("--json", action="store_true")
    status.set_defaults(handler=commands.status)

    batches = sub.add_parser("batches", help="list or show batches")
    bsub = batches.add_subparsers(dest="action", required=True)
    blist = bsub.add_parser("list")
    blist.add_argument("--status")
    blist.add_argument("--limit", type=int, default=50)
    blist.add_argument("--json", action="store_true")
    blist.set_defaults(handler=commands.batches_list)
    bshow = bsub.add_parser("show")
    bshow.add_argument("batch_id")
    bshow.add_argument("--json", action="store_true")
    bshow.set_defaults(handler=commands.batches_show)
    for action, text, handler in (
            ("resubmit", "embed a finished batch again (new attempt)", commands.resubmit),
            ("retry-failed", "a new attempt with only the failed or dead items",
             commands.retry_failed),
            ("cancel", "cancel its Gemini job and mark it cancelled", commands.cancel)):
        redrive = bsub.add_parser(action, help=text)
        redrive.add_argument("batch_id")
        redrive.set_defaults(handler=handler)
    bsub.choices["resubmit"].add_argument(
        "--fresh", action="store_true",
        help="send every item to Gemini, copying no stored vector (a model update, a suspect"
             " vector)")


def _letters(sub: Any) -> None:
    """Parked, dead and report."""
    parked = sub.add_parser("parked", help="messages parked on batch.auth_failed")
    psub = parked.add_subparsers(dest="action", required=True)
    _listing(psub, commands.parked_list)
    preplay = psub.add_parser("replay", help="replay parked messages now")
    preplay.add_argument("--batch")
    preplay.set_defaults(handler=commands.parked_replay)

    dead = sub.add_parser("dead", help="dead letters on batch.dead")
    dsub = dead.add_subparsers(dest="action", required=True)
    _listing(dsub, commands.dead_list)
    dreplay = dsub.add_parser("replay", help="publish a dead letter's batch as a new attempt")
    dreplay.add_argument("seq", type=int, metavar="ID", help="the dead letter's BATCH sequence")
    dreplay.set_defaults(handler=commands.dead_replay)

    report = sub.add_parser("report", help="a run summary")
    report.add_argument("--markdown", action="store_true", required=True,
                        help="write it as Markdown (the only format)")
    report.add_argument("--output", type=Path, help="file to write (default: stdout)")
    report.set_defaults(handler=commands.markdown_report)


def _listing(actions: Any, handler: Handler) -> None:
    """A `list` action: a table, or JSON with --json."""
    listing = actions.add_parser("list")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(handler=handler)


def _local(sub: Any) -> None:
    """Emulator, demo, dev and asyncapi."""
    # Listed for --help only: `main` hands the emulator its arguments before parsing.
    emulator = sub.add_parser("emulator", help="the Gemini API emulator alone")
    emulator.add_argument("args", nargs=argparse.REMAINDER)

    sub.add_parser("demo", help="the whole system on this machine").set_defaults(handler=_demo)
    dev = sub.add_parser("dev", help="a local stack that stays up until Ctrl-C, data kept")
    dev.add_argument("--dir", type=Path, default=Path(".batchyard"),
                     help="where the servers keep their data and ports (default .batchyard)")
    dev.add_argument("--fresh", action="store_true", help="remove the kept data first")
    dev.add_argument("--real", action="store_true",
                     help="the real Gemini API with GEMINI_API_KEY instead of the emulator")
    dev.set_defaults(handler=_dev)
    asyncapi = sub.add_parser("asyncapi", help="print the event API as an AsyncAPI 3.0 document")
    asyncapi.add_argument("--schemas", type=Path, metavar="DIR",
                          help="also write each payload's JSON Schema into DIR")
    asyncapi.set_defaults(offline=_asyncapi)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["emulator"]:
        # Its options are its own: batchyard's parser would refuse them as unknown.
        from sandbox.emulator import main as emulator_main

        return emulator_main(argv[1:])
    args = _parser().parse_args(argv)
    if args.offline is not None:
        return args.offline(args)
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"batchyard: bad setting: {exc}", file=sys.stderr)
        return 2
    handler: Handler = args.handler
    from consumers.natsauth import StartupError

    try:
        factory = _loop_factory() if args.pod else None
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


def _asyncapi(args: argparse.Namespace) -> int:
    from events.asyncapi import write

    return write(args.schemas)


async def _streams_export(settings: Settings, args: argparse.Namespace) -> int:
    from consumers.ops import provision

    for path in provision.export(args.directory, args.replicas):
        print(path)
    return 0


async def _streams_apply(settings: Settings, args: argparse.Namespace) -> int:
    from consumers.connect import connect_nats
    from consumers.ops import provision

    nc = await connect_nats(settings, max_reconnect_attempts=3)
    try:
        changed = await provision.apply(nc.jetstream(), args.replicas)
    finally:
        await nc.close()
    print("\n".join(changed) if changed else "streams: up to date")
    return 0


def _migration(step: MigrationStep) -> Handler:
    """The handler of a `migrate` subcommand: `step` on a Migrator over one connection,
    its text printed."""

    async def handler(settings: Settings, args: argparse.Namespace) -> int:
        import asyncpg

        from consumers.store.migrate import MigrationError, Migrator

        conn = await asyncpg.connect(settings.database_url, timeout=10)
        try:
            print(await step(Migrator(conn), args))
        except MigrationError as exc:
            print(f"batchyard: {exc}", file=sys.stderr)
            return 1
        except asyncpg.InsufficientPrivilegeError as exc:
            print(f"batchyard: {exc} (migrations run as the owner role)", file=sys.stderr)
            return 1
        finally:
            await conn.close()
        return 0

    return handler


async def _migrate_up(migrator: Migrator, args: argparse.Namespace) -> str:
    applied = await migrator.up()
    return f"applied {applied}" if applied else "migrations: up to date"


async def _migrate_down(migrator: Migrator, args: argparse.Namespace) -> str:
    return f"reverted {await migrator.down(args.steps)}"


async def _migrate_force(migrator: Migrator, args: argparse.Namespace) -> str:
    await migrator.force(args.version)
    return f"version forced to {args.version}"


async def _migrate_status(migrator: Migrator, args: argparse.Namespace) -> str:
    return json.dumps(await migrator.status())


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
