"""PostgreSQL errors as the rest of batchyard sees them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg

from consumers.errors import RetryableError


@asynccontextmanager
async def db_errors() -> AsyncIterator[None]:
    """PostgreSQL outages are retryable; constraint violations are bugs and propagate."""
    try:
        yield
    except (OSError, asyncpg.InterfaceError, asyncpg.CannotConnectNowError,
            asyncpg.ConnectionDoesNotExistError, asyncpg.TooManyConnectionsError,
            asyncpg.AdminShutdownError, asyncpg.DeadlockDetectedError,
            asyncpg.SerializationError, TimeoutError) as exc:
        raise RetryableError(f"database: {type(exc).__name__}: {exc}") from None
