"""`batchyard run ROLE...`: run roles until SIGTERM, then drain and exit 0."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable

import structlog

from consumers import http, logs, malloc
from consumers.app import App
from consumers.roles.key_health import KeyHealthRole
from consumers.roles.poll import Poll
from consumers.roles.recovery import Recovery
from consumers.roles.submit import Submit
from consumers.runtime import Role, Runtime
from consumers.settings import Settings

log = structlog.get_logger("batchyard")

ROLES: dict[str, Callable[[App], Role]] = {
    "submit": Submit, "poll": Poll, "key-health": KeyHealthRole, "recovery": Recovery}


def role_names(names: list[str]) -> list[str]:
    """Expand `all` and reject unknown names."""
    chosen: list[str] = []
    for name in names:
        for n in (list(ROLES) if name == "all" else [name]):
            if n not in ROLES:
                raise ValueError(f"unknown role {n!r}; roles: {', '.join(ROLES)}, all")
            if n not in chosen:
                chosen.append(n)
    return chosen


async def run_roles(settings: Settings, names: list[str]) -> int:
    logs.configure(settings.log_level)
    malloc.keep_freed()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):  # before connecting: a stop during start-up
        loop.add_signal_handler(sig, stop.set)  # still ends in an orderly exit 0
    app = await App.open(settings, name=f"batchyard-{'-'.join(names)}", roles=len(names))
    roles: list[Role] = [ROLES[n](app) for n in names]
    runtime = Runtime(app.js, roles, concurrency=settings.concurrency,
                      drain_timeout=settings.drain_timeout)
    runtime.stop = stop
    try:
        async with http.serve(app, settings.http_port,
                              lambda: runtime.bound == set(names)) as port, \
                asyncio.TaskGroup() as tg:
            log.info("pod.started", roles=names, key_fingerprint=app.keys.fingerprint,
                     http_port=port)
            background = [tg.create_task(app.guard.watch(), name="keyguard")]
            for role in roles:
                if (extra := getattr(role, "background", None)) is not None:
                    background.append(tg.create_task(extra(), name=f"{role.name}-background"))
            await runtime.run()
            for task in background:
                task.cancel()
    finally:
        await app.close()
        log.info("pod.stopped", roles=names)
    return 0
