"""The seam between the engine and PostgreSQL.

The engine asks a :class:`Database` for transactions. :class:`PoolDatabase`
gives each one its own pooled connection; :class:`RollbackDatabase` runs
every transaction as a savepoint inside one outer transaction that is rolled
back at the end, which is how ``--dry-run`` shows exactly what a real run
would remove while changing nothing.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Protocol, TypeAlias

import asyncpg
import structlog
from asyncpg.pool import PoolConnectionProxy

from collector.errors import DatabaseUnavailable

log = structlog.get_logger(__name__)

#: Errors that mean "the server is not there (yet)": worth waiting for.
CONNECT_ERRORS = (OSError, asyncio.TimeoutError, asyncpg.CannotConnectNowError)


Connection: TypeAlias = "asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]"


class Database(Protocol):
    def transaction(self) -> AbstractAsyncContextManager[Connection]:
        """A connection inside a transaction that commits on a clean exit."""


class PoolDatabase:
    def __init__(self, pool: asyncpg.Pool[asyncpg.Record]) -> None:
        self.pool = pool

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Connection]:
        async with self.pool.acquire() as conn, conn.transaction():
            yield conn


class RollbackDatabase:
    """All transactions nest in one connection's outer transaction; see :meth:`session`."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._lock = asyncio.Lock()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Connection]:
        async with self._lock, self._conn.transaction():
            yield self._conn

    @classmethod
    @asynccontextmanager
    async def session(cls, pool: asyncpg.Pool[asyncpg.Record]) -> AsyncIterator[RollbackDatabase]:
        async with pool.acquire() as conn:
            outer = conn.transaction()
            await outer.start()
            try:
                yield cls(conn)
            finally:
                await outer.rollback()


async def create_pool(
    dsn: str, *, max_size: int = 10, wait_s: float = 30.0
) -> asyncpg.Pool[asyncpg.Record]:
    """A pool, retrying with capped, jittered backoff while the server is unreachable."""
    delay, waited = 0.2, 0.0
    while True:
        try:
            return await asyncpg.create_pool(dsn, min_size=1, max_size=max_size)
        except CONNECT_ERRORS as exc:
            if waited >= wait_s:
                raise DatabaseUnavailable(f"cannot reach the database: {exc}") from exc
            log.warning("database_unreachable", error=str(exc), retry_in_s=round(delay, 2))
            await asyncio.sleep(delay)
            waited += delay
            delay = min(delay * 2, 5.0) * random.uniform(0.8, 1.2)
