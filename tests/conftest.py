"""Real servers for every test: nats-server, PostgreSQL and the Gemini emulator."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import nats
import pytest
from nats.aio.client import Client as NATS

from consumers.ops import provision
from consumers.store.migrate import Migrator
from sandbox.natsd import NatsServer, nats_server
from sandbox.pg import PostgresServer, postgres_server
from tests.harness import Stack

_db_numbers = itertools.count(1)


@pytest.fixture(scope="session")
async def pg() -> AsyncIterator[PostgresServer]:
    """One PostgreSQL cluster for the session; each test gets its own database."""
    async with postgres_server() as server:
        yield server


@pytest.fixture
async def database_url(pg: PostgresServer) -> AsyncIterator[str]:
    """A fresh, empty database on the session's cluster."""
    name = f"t{next(_db_numbers)}"
    admin = await asyncpg.connect(pg.url)
    try:
        await admin.execute(f"CREATE DATABASE {name}")
    finally:
        await admin.close()
    yield pg.url.rsplit("/", 1)[0] + f"/{name}"


@pytest.fixture
async def migrated_url(database_url: str) -> str:
    """A fresh database with every migration applied."""
    conn = await asyncpg.connect(database_url)
    try:
        await Migrator(conn).up()
    finally:
        await conn.close()
    return database_url


@pytest.fixture
async def natsd() -> AsyncIterator[NatsServer]:
    """A fresh nats-server with JetStream for one test."""
    async with nats_server() as server:
        yield server


@pytest.fixture
async def nc(natsd: NatsServer) -> AsyncIterator[NATS]:
    """A client of `natsd` with every stream, consumer and bucket applied."""
    client = await nats.connect(natsd.url)
    await provision.apply(client.jetstream())
    try:
        yield client
    finally:
        await client.close()


KEY = "AIzaSyBatchyardTestKeyValid000000000001"


@pytest.fixture
async def emulator() -> AsyncIterator[Any]:
    """The Gemini API emulator in its own process, with KEY valid."""
    from sandbox.emulator.testing import launch_emulator

    async with launch_emulator(keys=(KEY,)) as emu:
        yield emu


@pytest.fixture
async def stack(nc: NATS, natsd: NatsServer, migrated_url: str, emulator: Any,
                tmp_path: Path) -> AsyncIterator[Stack]:
    """nats-server, PostgreSQL and the emulator, ready for `batchyard run` pods."""
    s = Stack(natsd=natsd, database_url=migrated_url, emulator=emulator, key=KEY, tmp=tmp_path)
    s.key_file.write_text(KEY + "\n")
    try:
        yield s
    finally:
        await s.stop_all()
