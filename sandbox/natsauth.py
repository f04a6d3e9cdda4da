"""nats-server with batchyard's authorization config (deploy/nats/cluster/auth.conf),
optionally behind TLS, for tests and local runs."""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from events.permissions import USERS, password_variable
from sandbox.natsd import NatsServer

AUTH_CONF = Path(__file__).resolve().parents[1] / "deploy" / "nats" / "cluster" / "auth.conf"


@dataclass(frozen=True)
class ServerTls:
    cert: Path
    key: Path


def passwords() -> dict[str, str]:
    """A fresh password for every user of the authorization config. nats-server parses an
    environment variable as a config value, so each starts with a letter (a string)."""
    return {user: "p" + secrets.token_hex(16) for user in USERS}


def write_config(directory: Path, tls: ServerTls | None = None) -> Path:
    """A server config that includes the deploy's auth.conf unchanged."""
    shutil.copy(AUTH_CONF, directory / "auth.conf")
    lines = ["include ./auth.conf"]
    if tls:
        lines += ["tls {", f'  cert_file: "{tls.cert}"', f'  key_file: "{tls.key}"',
                  "  timeout: 5", "}"]
    path = directory / "nats.conf"
    path.write_text("\n".join(lines) + "\n")
    return path


@asynccontextmanager
async def authorized_nats_server(users: dict[str, str],
                                 tls: ServerTls | None = None) -> AsyncIterator[NatsServer]:
    """nats-server with every user of `users` (name: password), in a temp dir."""
    tmp = Path(tempfile.mkdtemp(prefix="batchyard-nats-"))
    env = {"PATH": os.environ.get("PATH", "")}
    env.update({password_variable(u): p for u, p in users.items()})
    server = NatsServer(tmp, config=write_config(tmp, tls), env=env,
                        scheme="tls" if tls else "nats")
    try:
        await server.start()
        yield server
    finally:
        await server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
