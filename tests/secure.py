"""A Stack over nats-server started with the deploy's authorization config: every pod,
command and test client logs in as a user of events/permissions.py."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
from nats.aio.client import Client as NATS

from consumers.ops import provision
from events.permissions import inbox_prefix
from sandbox.natsauth import ServerTls, authorized_nats_server, passwords
from tests.harness import Stack


@dataclass
class AuthStack(Stack):
    passwords: dict[str, str] = field(default_factory=dict)
    nats_options: dict[str, Any] = field(default_factory=dict)

    def login(self, user: str) -> dict[str, str]:
        """The environment of a pod or command logged in as `user`."""
        return {"NATS_USER": user, "NATS_PASSWORD": self.passwords[user]}

    async def connect(self, user: str, **options: Any) -> NATS:
        return await nats.connect(self.natsd.url, user=user, password=self.passwords[user],
                                  inbox_prefix=inbox_prefix(user),
                                  **{**self.nats_options, **options})

    async def nc(self) -> NATS:
        """Test clients are operators (the wider user)."""
        return await self.connect("operator")

    async def as_user(self, user: str, *args: str) -> tuple[int, str]:
        """Run `batchyard ARGS...` logged in as `user`."""
        saved = dict(self.overrides)
        self.overrides.update(self.login(user))
        try:
            return await self.cli(*args)
        finally:
            self.overrides = saved


@asynccontextmanager
async def auth_stack(database_url: str, emulator: Any, key: str, tmp: Path,
                     server_tls: ServerTls | None = None,
                     **nats_options: Any) -> AsyncIterator[AuthStack]:
    """Servers provisioned by the operator user; pods get no user until given one."""
    users = passwords()
    async with authorized_nats_server(users, server_tls) as server:
        s = AuthStack(natsd=server, database_url=database_url, emulator=emulator, key=key,
                      tmp=tmp, passwords=users, nats_options=nats_options)
        s.key_file.write_text(key + "\n")
        nc = await s.nc()
        try:
            await provision.apply(nc.jetstream())
        finally:
            await nc.close()
        try:
            yield s
        finally:
            await s.stop_all()
