"""A PostgreSQL password rotated without a restart: with `passfile=` in DATABASE_URL,
asyncpg reads the file again for every new connection of the pool (README "Security")."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from consumers.connect import create_pool
from consumers.settings import Settings
from sandbox.pg import DATABASE, PostgresServer

ROLE = "by_rotated"


@pytest.fixture(scope="module")
async def scram_pg() -> AsyncIterator[PostgresServer]:
    """A cluster that checks passwords: the session's one trusts every login, so a wrong
    password would pass there and prove nothing."""
    tmp = Path(tempfile.mkdtemp(prefix="batchyard-pg-scram-"))
    server = PostgresServer(tmp)
    try:
        await server.init()
        (server.data / "pg_hba.conf").write_text(
            "local all all trust\n"
            "host all postgres 127.0.0.1/32 trust\n"
            "host all all 127.0.0.1/32 scram-sha-256\n")
        await server.start()
        admin = await asyncpg.connect(server.url)
        try:
            await admin.execute(f"CREATE ROLE {ROLE} LOGIN PASSWORD 'first-pw'")
        finally:
            await admin.close()
        yield server
    finally:
        await server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


async def _alter_password(server: PostgresServer, password: str) -> None:
    admin = await asyncpg.connect(server.url)
    try:
        await admin.execute(f"ALTER ROLE {ROLE} PASSWORD '{password}'")
    finally:
        await admin.close()


def _write_passfile(path: Path, server: PostgresServer, password: str) -> None:
    # As a Secret update does: a new file renamed over the old one, never a partial write.
    new = path.with_suffix(".new")
    new.write_text(f"127.0.0.1:{server.port}:{DATABASE}:{ROLE}:{password}\n")
    new.chmod(0o600)
    new.replace(path)


async def test_rotated_password_reaches_new_pool_connections(
        scram_pg: PostgresServer, tmp_path: Path) -> None:
    """The pool keeps its open connections through the change; a connection opened after
    `ALTER ROLE ... PASSWORD` and a rewritten passfile logs in with the new password,
    and one opened while the file still held the old password is refused."""
    server = scram_pg
    passfile = tmp_path / "pgpass"
    _write_passfile(passfile, server, "first-pw")
    url = f"postgresql://{ROLE}@127.0.0.1:{server.port}/{DATABASE}?passfile={passfile}"
    pool = await create_pool(Settings.from_env({"DATABASE_URL": url}), min_size=1, max_size=2)
    try:
        held = await pool.acquire()
        await _alter_password(server, "second-pw")
        assert await held.fetchval("SELECT current_user") == ROLE  # still logged in

        with pytest.raises(asyncpg.InvalidPasswordError):
            async with asyncio.timeout(10):
                await pool.acquire()  # the second slot: a new login with the old file

        _write_passfile(passfile, server, "second-pw")
        async with pool.acquire() as fresh:
            assert fresh is not held
            assert await fresh.fetchval("SELECT current_user") == ROLE
        await pool.release(held)
        await pool.expire_connections()  # what max_inactive_connection_lifetime does in time
        async with pool.acquire() as again:
            assert await again.fetchval("SELECT 1") == 1
    finally:
        await pool.close()


async def test_passfile_with_group_access_is_ignored(
        scram_pg: PostgresServer, tmp_path: Path) -> None:
    """asyncpg, like libpq, skips a passfile that its group or others may read: the login
    then goes without a password and is refused. A Secret mounted into a pod with
    fsGroup gets group read, which is why the manifests do not use one (README "Deploy")."""
    server = scram_pg
    await _alter_password(server, "third-pw")
    passfile = tmp_path / "pgpass"
    _write_passfile(passfile, server, "third-pw")
    url = f"postgresql://{ROLE}@127.0.0.1:{server.port}/{DATABASE}?passfile={passfile}"
    conn = await asyncpg.connect(url)
    await conn.close()
    passfile.chmod(0o640)
    with pytest.warns(UserWarning, match="group or world access"), \
            pytest.raises(asyncpg.InvalidPasswordError):
        await asyncpg.connect(url)
