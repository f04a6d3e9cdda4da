"""`batchyard migrate`: golang-migrate compatible SQL migrations under an advisory lock.

State lives in `batchyard.schema_migrations` exactly as golang-migrate keeps it (one row,
`version` and `dirty`), and the lock id is the one golang-migrate derives, so the two
tools exclude each other.
"""

from __future__ import annotations

import asyncio
import re
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import asyncpg

SCHEMA = "batchyard"
TABLE = "schema_migrations"
_FILE = re.compile(r"^(\d+)_(.+)\.(up|down)\.sql$")
_LOCK_SALT = 1486364155


class MigrationError(RuntimeError):
    """A migration cannot run; the message says what to do."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    up: str
    down: str


def migrations_dir() -> Path:
    package = Path(__file__).resolve().parent.parent  # consumers/
    for candidate in (package.parent / "migrations", package / "_migrations"):
        if candidate.is_dir():
            return candidate
    raise MigrationError("migrations directory not found")


def load(directory: Path | None = None) -> list[Migration]:
    """Every migration in `directory`, ordered by version; each needs up and down."""
    directory = directory or migrations_dir()
    found: dict[int, dict[str, str]] = {}
    names: dict[int, str] = {}
    for path in directory.iterdir():
        m = _FILE.match(path.name)
        if m:
            version = int(m[1])
            found.setdefault(version, {})[m[3]] = path.read_text()
            names[version] = m[2]
    result = []
    for version in sorted(found):
        sides = found[version]
        if set(sides) != {"up", "down"}:
            raise MigrationError(f"migration {version} lacks its up or down file")
        result.append(Migration(version, names[version], sides["up"], sides["down"]))
    return result


def lock_id(database: str) -> int:
    """golang-migrate's advisory lock id for (schema, table, database)."""
    key = "\x00".join([SCHEMA, TABLE, database]).encode()
    return (zlib.crc32(key) * _LOCK_SALT) & 0xFFFFFFFF


class Migrator:
    def __init__(self, conn: asyncpg.Connection, migrations: list[Migration] | None = None):
        self.conn = conn
        self.migrations = migrations if migrations is not None else load()

    async def _lock(self, timeout: float) -> int:
        database = await self.conn.fetchval("SELECT current_database()")
        key = lock_id(database)
        deadline = time.monotonic() + timeout
        while not await self.conn.fetchval("SELECT pg_try_advisory_lock($1)", key):
            if time.monotonic() > deadline:
                raise MigrationError(f"another migration held the lock for over {timeout:.0f}s")
            await asyncio.sleep(0.1)
        return int(key)

    async def _unlock(self, key: int) -> None:
        await self.conn.execute("SELECT pg_advisory_unlock($1)", key)

    async def _ensure_table(self) -> None:
        await self.conn.execute(
            f"CREATE SCHEMA IF NOT EXISTS {SCHEMA};"
            f"CREATE TABLE IF NOT EXISTS {SCHEMA}.{TABLE} "
            "(version bigint NOT NULL PRIMARY KEY, dirty boolean NOT NULL)"
        )

    async def version(self) -> tuple[int | None, bool]:
        """(version, dirty); version None when nothing is applied."""
        await self._ensure_table()
        row = await self.conn.fetchrow(f"SELECT version, dirty FROM {SCHEMA}.{TABLE} LIMIT 1")
        return (None, False) if row is None else (int(row["version"]), bool(row["dirty"]))

    async def _set(self, conn: asyncpg.Connection, version: int | None, dirty: bool) -> None:
        await conn.execute(f"TRUNCATE {SCHEMA}.{TABLE}")
        if version is not None:
            await conn.execute(
                f"INSERT INTO {SCHEMA}.{TABLE} (version, dirty) VALUES ($1, $2)", version, dirty
            )

    async def _check_clean(self) -> int | None:
        version, dirty = await self.version()
        if dirty:
            raise MigrationError(
                f"database is dirty at version {version}: a migration stopped half-way. "
                f"Check the schema against migrations/{version:06d}_*.sql, repair it by hand, "
                f"then run `batchyard migrate force {version}` (applied) or "
                f"`batchyard migrate force {self._before(version or 0)}` (not applied)"
            )
        return version

    def _before(self, version: int) -> int:
        older = [m.version for m in self.migrations if m.version < version]
        return older[-1] if older else -1

    async def _step(self, sql: str, running: int, before: int | None, after: int | None) -> None:
        # dirty is committed first, so a crash mid-migration leaves it set for others to see
        async with self.conn.transaction():
            await self._set(self.conn, running, True)
        try:
            async with self.conn.transaction():
                await self.conn.execute(sql)
                await self._set(self.conn, after, False)
        except BaseException:
            # The migration's own transaction rolled back: nothing of it is applied.
            async with self.conn.transaction():
                await self._set(self.conn, before, False)
            raise

    async def up(self, timeout: float = 60.0) -> list[int]:
        """Apply every pending migration; returns the versions applied."""
        key = await self._lock(timeout)
        try:
            current = await self._check_clean()
            applied = []
            for m in self.migrations:
                if current is None or m.version > current:
                    await self._step(m.up, m.version, current, m.version)
                    current = m.version
                    applied.append(m.version)
            return applied
        finally:
            await self._unlock(key)

    async def down(self, steps: int, timeout: float = 60.0) -> list[int]:
        """Revert the newest `steps` applied migrations; returns the versions reverted."""
        key = await self._lock(timeout)
        try:
            current = await self._check_clean()
            reverted: list[int] = []
            for m in reversed(self.migrations):
                if len(reverted) >= steps or current is None:
                    break
                if m.version > current:
                    continue
                older = self._before(m.version)
                after = older if older >= 0 else None
                await self._step(m.down, m.version, current, after)
                current = after
                reverted.append(m.version)
            return reverted
        finally:
            await self._unlock(key)

    async def force(self, version: int) -> None:
        """Record `version` as applied and clean (-1: nothing applied), running no SQL."""
        key = await self._lock(60.0)
        try:
            await self._ensure_table()
            async with self.conn.transaction():
                await self._set(self.conn, None if version < 0 else version, False)
        finally:
            await self._unlock(key)

    async def status(self) -> dict[str, object]:
        version, dirty = await self.version()
        pending = [m.version for m in self.migrations if version is None or m.version > version]
        return {"version": version, "dirty": dirty, "pending": pending,
                "latest": self.migrations[-1].version if self.migrations else None}
