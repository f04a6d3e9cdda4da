"""Connections to NATS and PostgreSQL built from Settings."""

from __future__ import annotations

import ssl
from typing import Any

import asyncpg
import nats
from nats.aio.client import Client as NATS

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
    if settings.nats_creds:
        kwargs["user_credentials"] = settings.nats_creds
    if settings.nats_user:
        kwargs["user"] = settings.nats_user
        kwargs["password"] = settings.nats_password or ""
    if settings.nats_tls_ca:
        kwargs["tls"] = ssl.create_default_context(cafile=settings.nats_tls_ca)
    kwargs.update(options)
    return await nats.connect(**kwargs)


async def create_pool(settings: Settings, **options: Any) -> asyncpg.Pool:
    """One pool per process; statements time out rather than hang."""
    kwargs: dict[str, Any] = {
        "min_size": 1,
        "max_size": max(4, settings.concurrency + 2),
        "command_timeout": 60,
        "timeout": 10,
        "server_settings": {"application_name": "batchyard"},
    }
    kwargs.update(options)
    pool = await asyncpg.create_pool(settings.database_url, **kwargs)
    assert pool is not None
    return pool
