"""Shared fixtures: a real PostgreSQL test database built by the migrations.

The services come from ``scripts/services up`` (``scripts/test`` runs it).
The session creates a fresh ``registry_test`` database; each test starts
from empty tables.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest
import structlog

from collector.db.connector import PoolDatabase
from collector.db.migrations import migrate
from collector.engine import Callbacks, Engine, EngineConfig
from tests.registry import FixedClock, Registry

ADMIN_URL = os.environ.get(
    "COLLECTOR_TEST_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
#: Override to run two suites at once on one server.
TEST_DB = os.environ.get("COLLECTOR_TEST_DATABASE", "registry_test")
TEST_URL = ADMIN_URL.rsplit("/", 1)[0] + "/" + TEST_DB


@pytest.fixture(scope="session")
async def database_url() -> str:
    try:
        admin = await asyncpg.connect(ADMIN_URL)
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.exit(f"PostgreSQL is not reachable at {ADMIN_URL} ({exc}); run scripts/services up")
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {TEST_DB} WITH (FORCE)")
        await admin.execute(f"CREATE DATABASE {TEST_DB}")
    finally:
        await admin.close()
    conn = await asyncpg.connect(TEST_URL)
    try:
        await migrate(conn)
    finally:
        await conn.close()
    return TEST_URL


@pytest.fixture(scope="session")
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool[asyncpg.Record]]:
    async with asyncpg.create_pool(database_url, min_size=2, max_size=20) as pool:
        yield pool


@pytest.fixture
async def db(pool: asyncpg.Pool[asyncpg.Record]) -> asyncpg.Pool[asyncpg.Record]:
    """The pool, on empty registry and gc tables."""
    async with pool.acquire() as conn:
        tables = await conn.fetch(
            """
            SELECT format('%I.%I', schemaname, tablename) AS name FROM pg_tables
            WHERE schemaname IN ('public', 'gc') AND tablename <> 'schema_migration'
            """
        )
        await conn.execute(
            f"TRUNCATE {', '.join(row['name'] for row in tables)} RESTART IDENTITY CASCADE"
        )
    return pool


@pytest.fixture
async def registry(db: asyncpg.Pool[asyncpg.Record]) -> AsyncIterator[Registry]:
    async with db.acquire() as conn:
        yield Registry(conn)


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock()


@pytest.fixture
def callbacks() -> Callbacks:
    return Callbacks()


@pytest.fixture
def engine(db: asyncpg.Pool[asyncpg.Record], clock: FixedClock, callbacks: Callbacks) -> Engine:
    config = EngineConfig(batch_size=50, protected_digests=("sha256:" + "e" * 64,))
    return Engine(PoolDatabase(db), config, clock=clock, callbacks=callbacks)


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """configure_logging changes process-wide state (and binds the captured stderr, closed
    after the test): put both back for the tests that follow."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    config = structlog.get_config()
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.configure(**config)
