"""`batchyard migrate` against a real PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import asyncpg
import pytest

from consumers.store.migrate import Migration, MigrationError, Migrator, load


async def _tables(conn: asyncpg.Connection) -> set[str]:
    rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'batchyard'")
    return {r["tablename"] for r in rows}


async def test_up_down_up_round_trip(database_url: str) -> None:
    """up creates the contract's tables, down removes them, up brings them back."""
    conn = await asyncpg.connect(database_url)
    try:
        m = Migrator(conn)
        latest = load()[-1].version
        assert await m.up() == [x.version for x in load()]
        assert {"batches", "embeddings", "schema_migrations"} <= await _tables(conn)
        assert await m.version() == (latest, False)
        assert await m.up() == []
        assert await m.down(len(load())) == [x.version for x in reversed(load())]
        assert await _tables(conn) == {"schema_migrations"}
        assert await m.version() == (None, False)
        await m.up()
        cols = {r["column_name"] for r in await conn.fetch(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_schema = 'batchyard' AND table_name = 'batches'")}
        assert {"batch_id", "status", "model", "items_total", "items_embedded", "items_failed",
                "attempt", "job_name", "input_file", "key_fingerprint", "last_error", "source",
                "created_at", "updated_at", "submitted_at", "completed_at"} <= cols
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute("INSERT INTO batchyard.batches (batch_id, status, model) "
                               "VALUES ('b', 'bogus', 'm')")
    finally:
        await conn.close()


async def test_four_concurrent_processes_apply_each_migration_once(database_url: str) -> None:
    """Four `batchyard migrate up` at once: each migration runs exactly once, no errors."""
    env = {**os.environ, "DATABASE_URL": database_url}
    procs = [await asyncio.create_subprocess_exec(
        sys.executable, "-m", "consumers", "migrate", "up", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE) for _ in range(4)]
    outs = [await p.communicate() for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, outs
    applied = [o.decode() for o, _ in outs if o.startswith(b"applied")]
    assert len(applied) == 1, outs
    conn = await asyncpg.connect(database_url)
    try:
        assert await Migrator(conn).version() == (load()[-1].version, False)
    finally:
        await conn.close()


async def test_failed_migration_rolls_back_and_dirty_db_refuses(
    database_url: str, tmp_path: Path
) -> None:
    """A broken migration applies nothing; a database left dirty refuses to migrate."""
    good = load()
    broken = [*good, Migration(99, "broken", "CREATE TABLE batchyard.x (a int); SELECT 1/0;", "")]
    conn = await asyncpg.connect(database_url)
    try:
        m = Migrator(conn, broken)
        with pytest.raises(asyncpg.DivisionByZeroError):
            await m.up()
        assert await m.version() == (good[-1].version, False)
        assert "x" not in await _tables(conn)
        await conn.execute("UPDATE batchyard.schema_migrations SET version = 99, dirty = true")
        with pytest.raises(MigrationError, match=r"dirty at version 99.*migrate force"):
            await m.up()
        await m.force(good[-1].version)
        assert await Migrator(conn, good).up() == []
        assert await m.version() == (good[-1].version, False)
    finally:
        await conn.close()


def test_every_migration_has_up_and_down() -> None:
    """Migration files follow golang-migrate's naming, in pairs."""
    names = sorted(p.name for p in (Path(__file__).parents[2] / "migrations").iterdir())
    assert names[:2] == ["000001_init.down.sql", "000001_init.up.sql"]
    assert len(names) == 2 * len(load())
    assert "000002_jobs.up.sql" in names
