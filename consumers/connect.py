"""Connections to NATS and PostgreSQL built from Settings."""

from __future__ import annotations

import ssl
from typing import Any

import asyncpg
from nats.aio.client import Client as NATS

from consumers import natsauth
from consumers.settings import Settings


async def connect_nats(settings: Settings, name: str = "batchyard", **options: Any) -> NATS:
    """Connect with reconnects forever: an outage is waited out, never fatal."""
    kwargs: dict[str, Any] = {
        "servers": [s.strip() for s in settings.nats_url.split(",")],
        "name": name,
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": 0.5,
        "connect_timeout": 5,
        "allow_reconnect": True,
    }
    kwargs.update(natsauth.auth_options(settings))
    kwargs.update(options)
    return await natsauth.connect(kwargs)


async def _reset(conn: asyncpg.Connection) -> None:
    """What a connection goes back to the pool with: asyncpg's own reset has already
    rolled back an open transaction and dropped the listener callbacks.

    Its default also runs `pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL`,
    a round trip on every release, so one for each query made through the pool. Our
    code leaves none of that behind: no SET, no cursor outside a transaction, and the
    two that take session state (Store.claim's advisory lock, Packs.woken's LISTEN)
    give it back or close the connection (tests/store/test_pool_reset.py)."""


async def create_pool(settings: Settings, **options: Any) -> asyncpg.Pool:
    """One pool per process; statements time out rather than hang."""
    kwargs: dict[str, Any] = {
        "reset": _reset,
        "min_size": 1,
        "max_size": max(4, settings.concurrency + 2),
        "command_timeout": 60,
        "timeout": 10,
        "server_settings": {"application_name": "batchyard"},
    }
    kwargs.update(options)
    try:
        pool = await asyncpg.create_pool(settings.database_url, **kwargs)
    except asyncpg.InvalidAuthorizationSpecificationError as exc:
        raise natsauth.StartupError(f"PostgreSQL refused the connection: {exc} "
                                    "(check DATABASE_URL)") from None
    except ssl.SSLError as exc:
        raise natsauth.StartupError(f"PostgreSQL TLS failed: {exc} (check sslrootcert "
                                    "in DATABASE_URL)") from None
    assert pool is not None
    return pool
