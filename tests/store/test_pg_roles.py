"""PostgreSQL roles: the owner migrates, pods run as batchyard_runtime with DML only."""

from __future__ import annotations

import asyncio
import itertools
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from nats.aio.client import Client as NATS

from sandbox.natsd import NatsServer
from sandbox.pg import PostgresServer
from tests.conftest import KEY
from tests.harness import Stack, batch, submit, wait_finished

_n = itertools.count(1)


def _as(url: str, user: str) -> str:
    scheme, rest = url.split("://", 1)
    return f"{scheme}://{user}@{rest.split('@', 1)[1]}"


@pytest.fixture
async def owned(pg: PostgresServer, database_url: str) -> AsyncIterator[tuple[str, str]]:
    """A database created empty, an owner login (no superuser, no CREATEROLE) and a
    runtime login, made as a DBA would (README "Security"); URLs of (owner, runtime)."""
    n = next(_n)
    owner, app = f"by_owner_{n}", f"by_app_{n}"
    admin = await asyncpg.connect(database_url)
    try:
        await admin.execute("""
            DO $$ BEGIN
              IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'batchyard_runtime') THEN
                CREATE ROLE batchyard_runtime NOLOGIN; END IF;
              IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'batchyard_reader') THEN
                CREATE ROLE batchyard_reader NOLOGIN; END IF;
            END $$""")
        db = database_url.rsplit("/", 1)[1]
        await admin.execute(f"CREATE ROLE {owner} LOGIN PASSWORD 'owner-pw'")
        await admin.execute(f"GRANT CREATE ON DATABASE {db} TO {owner}")
        await admin.execute(f"CREATE ROLE {app} LOGIN PASSWORD 'app-pw' IN ROLE batchyard_runtime")
    finally:
        await admin.close()
    yield _as(database_url, owner), _as(database_url, app)


async def _cli(url: str, *args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "consumers", *args, env={"DATABASE_URL": url, "PATH": ""},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await proc.communicate()
    return proc.returncode or 0, out.decode()


async def test_runtime_role_cannot_create_or_drop(owned: tuple[str, str]) -> None:
    """After `migrate up` as the owner, the runtime role reads and writes rows but
    cannot create, drop or alter tables, nor touch the migration state."""
    owner_url, app_url = owned
    code, out = await _cli(owner_url, "migrate", "up")
    assert code == 0 and "applied" in out, out
    conn = await asyncpg.connect(app_url)
    try:
        await conn.execute("INSERT INTO batchyard.batches (batch_id, status, model, items_total)"
                           " VALUES ('r1', 'pending_submission', 'm', 1)")
        assert await conn.fetchval("DELETE FROM batchyard.batches RETURNING batch_id") == "r1"
        for ddl in ("CREATE TABLE batchyard.evil (x int)",
                    "CREATE TABLE public.evil (x int)",
                    "DROP TABLE batchyard.embeddings",
                    "ALTER TABLE batchyard.batches ADD COLUMN evil int",
                    "TRUNCATE batchyard.batches",
                    "DELETE FROM batchyard.schema_migrations",
                    "CREATE SCHEMA evil"):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute(ddl)
        assert await conn.fetchval("SELECT version FROM batchyard.schema_migrations") >= 6
    finally:
        await conn.close()
    code, out = await _cli(app_url, "migrate", "up")  # not the runtime role's to run
    assert code != 0 and "Traceback" not in out, out


async def test_owner_migrates_and_runtime_runs_all(
        owned: tuple[str, str], natsd: NatsServer, nc: NATS, emulator: Any,
        tmp_path: Path) -> None:
    """`migrate up` as the owner, then `run all` as the runtime role embeds batches on
    the batch and the online paths, with nothing refused."""
    owner_url, app_url = owned
    code, out = await _cli(owner_url, "migrate", "up")
    assert code == 0, out
    stack = Stack(natsd=natsd, database_url=app_url, emulator=emulator, key=KEY, tmp=tmp_path)
    stack.key_file.write_text(KEY + "\n")
    try:
        await stack.pod("all")
        for n in range(6):
            await submit(nc, batch(f"own{n}", 5 if n % 2 else 40))
        assert await wait_finished(stack, 6, timeout=90) == {"succeeded": 6}
        assert "permission denied" not in stack.logs()
    finally:
        await stack.stop_all()
