"""The seam between the collector and PostgreSQL, where asyncpg's errors become ours.

Every stage asks a :class:`Database` for transactions (or a plain connection);
whatever asyncpg raises inside one leaves it translated once, by :func:`translated`:
a lost server is :class:`DatabaseUnavailable`, a lost race :class:`Conflict` (both
retriable), a refused value :class:`Unstorable`, anything else :class:`StorageError`.

:class:`PoolDatabase` gives each transaction its own pooled connection;
:class:`RollbackDatabase` runs every transaction as a savepoint inside one outer
transaction that is rolled back at the end, which is how ``--dry-run`` shows exactly
what a real run would remove while changing nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from typing import Protocol, TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from collector.backoff import reach
from collector.db.migrations import require_current
from collector.errors import (
    ConfigError,
    Conflict,
    DatabaseUnavailable,
    StorageError,
    Unstorable,
)

#: Errors that mean "the server is not there (yet)": worth waiting for.
CONNECT_ERRORS = (OSError, asyncio.TimeoutError, asyncpg.CannotConnectNowError)
#: The connection went away mid-operation (server restart, a killed backend, a
#: network cut): wait for the database and redo the transaction. A connection
#: broken mid-operation can also leave asyncpg's protocol confused
#: (InternalClientError); the pool terminates such a connection.
DISCONNECTS = (
    OSError,  # TimeoutError included
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.InternalClientError,
    asyncpg.AdminShutdownError,
)


#: Lost a race with another transaction: replaying it decides afresh. A foreign key
#: violation is a push that raced a deletion (or the other way round).
CONFLICTS = (
    asyncpg.DeadlockDetectedError,
    asyncpg.SerializationError,
    asyncpg.ForeignKeyViolationError,
)
#: The database refused a value: no retry will store it.
UNSTORABLE = (asyncpg.DataError, asyncpg.ProgramLimitExceededError)


@contextmanager
def translated() -> Iterator[None]:
    """asyncpg's errors raised inside, as ours (``raise ... from``, the original kept)."""
    try:
        yield
    except CONFLICTS as exc:
        raise_if_cancelled(exc)
        raise Conflict(f"lost a race with another transaction: {exc}") from exc
    except UNSTORABLE as exc:
        raise Unstorable(f"the database refused a value: {exc}") from exc
    except DISCONNECTS as exc:
        raise_if_cancelled(exc)
        raise DatabaseUnavailable(f"lost the database: {exc!r}") from exc
    except asyncpg.PostgresError as exc:
        raise StorageError(f"the database failed: {exc!r}") from exc


def raise_if_cancelled(error: BaseException) -> None:
    """Re-raise the cancellation ``error`` hid. A task cancelled inside a transaction
    whose connection is lost gets, from the rollback on the way out, an
    InterfaceError in place of its CancelledError; caught as a lost connection and
    retried, the cancelled work would go on (asyncpg 0.32 on Python 3.11+)."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError() from error


Connection: TypeAlias = "asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]"


class Database(Protocol):
    def transaction(self) -> AbstractAsyncContextManager[Connection]:
        """A connection inside a transaction that commits on a clean exit."""


class PoolDatabase:
    def __init__(self, pool: asyncpg.Pool[asyncpg.Record]) -> None:
        self.pool = pool

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Connection]:
        with translated():
            async with self.pool.acquire() as conn, conn.transaction():
                yield conn

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[Connection]:
        """A pooled connection outside any transaction (each statement its own)."""
        with translated():
            async with self.pool.acquire() as conn:
                yield conn


class RollbackDatabase:
    """All transactions nest in one connection's outer transaction; see :meth:`session`."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._lock = asyncio.Lock()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Connection]:
        with translated():
            async with self._lock, self._conn.transaction():
                yield self._conn

    @classmethod
    @asynccontextmanager
    async def session(cls, pool: asyncpg.Pool[asyncpg.Record]) -> AsyncIterator[RollbackDatabase]:
        with translated():
            async with pool.acquire() as conn:
                outer = conn.transaction()
                await outer.start()
                try:
                    yield cls(conn)
                finally:
                    await outer.rollback()


async def create_pool(
    dsn: str,
    *,
    max_size: int = 10,
    wait_s: float = 30.0,
    application_name: str = "collector",
    migrated: bool = True,
) -> asyncpg.Pool[asyncpg.Record]:
    """A pool, retrying with backoff while the server is unreachable.

    A server that answers but refuses (no such database, bad credentials) is
    a configuration error: waiting would not help. So is, unless ``migrated``
    is False (for `collector migrate` itself), a database that lacks one of
    the collector's migrations. ``application_name`` names the connections in
    ``pg_stat_activity``.
    """
    pool = await _reach_pool(dsn, max_size, wait_s, application_name)
    if migrated:
        try:
            async with pool.acquire() as conn:
                await require_current(conn)
        except BaseException:
            await pool.close()
            raise
    return pool


async def _reach_pool(
    dsn: str, max_size: int, wait_s: float, application_name: str
) -> asyncpg.Pool[asyncpg.Record]:
    try:
        return await reach(
            lambda: asyncpg.create_pool(
                dsn,
                min_size=1,
                max_size=max_size,
                server_settings={"application_name": application_name},
            ),
            errors=CONNECT_ERRORS,
            wait_s=wait_s,
            unavailable=lambda reason: DatabaseUnavailable(f"cannot reach the database: {reason}"),
            event="database_unreachable",
        )
    except asyncpg.PostgresError as exc:
        raise ConfigError(f"cannot use the database: {exc}") from exc
    except ValueError as exc:  # a malformed DSN: its message may quote the password
        raise ConfigError(
            f"cannot use the database: malformed COLLECTOR_DATABASE_URL or --database-url"
            f" ({type(exc).__name__}; `collector config show` prints it, password masked)"
        ) from None
