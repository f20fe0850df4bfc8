"""Lost races and lost connections: the engine retries and still finishes exactly."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import pytest

from collector.db.connector import Connection, PoolDatabase, translated
from collector.engine import Engine, EngineConfig
from collector.engine.context import StepResult
from collector.errors import StorageError
from tests.conftest import ADMIN_URL
from tests.registry import FixedClock, Registry, outbox


class FailoverDatabase:
    """A pool whose every ``every``-th transaction loses its server session right after
    BEGIN, the way a failover or an operator's pg_terminate_backend would cut it. Like
    every Database, it hands asyncpg's errors to the edge's translation."""

    def __init__(self, pool: asyncpg.Pool[asyncpg.Record], admin: asyncpg.Connection, every: int):
        self.pool, self.admin, self.every = pool, admin, every
        self.transactions = self.killed = 0

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Connection]:
        with translated():
            async with self.pool.acquire() as conn, conn.transaction():
                self.transactions += 1
                if self.transactions % self.every == 0:
                    pid = conn.get_server_pid()
                    terminate = "SELECT pg_terminate_backend($1)::int"
                    self.killed += await self.admin.fetchval(terminate, pid)
                yield conn


async def test_connections_killed_mid_collection_are_retried(
    registry: Registry, db: asyncpg.Pool[asyncpg.Record], database_url: str
) -> None:
    """Terminating the engine's database sessions inside open transactions, again and
    again during a collection, costs retries, not work: everything due goes, each removal
    reported once."""
    ns = await registry.namespace()
    repo = await registry.repository(ns, "big")
    for i in range(250):
        manifest = await registry.manifest(repo, blobs=(await registry.blob(),))
        await registry.expired_tag(repo, manifest, f"t{i}")
    admin = await asyncpg.connect(ADMIN_URL)
    try:
        async with asyncpg.create_pool(database_url, min_size=1, max_size=6) as engine_pool:
            failover = FailoverDatabase(engine_pool, admin, every=20)
            engine = Engine(failover, EngineConfig(batch_size=10), clock=FixedClock())
            report = await engine.collect(repo, causation_id="failover")
    finally:
        await admin.close()
    assert failover.killed >= 4, "sessions must have been terminated mid-run"
    conn = registry.conn
    assert await conn.fetchval("SELECT count(*) FROM manifest") == 0
    assert await conn.fetchval("SELECT count(*) FROM blob") == 0
    # Every session died before its transaction wrote anything, so nothing was
    # committed behind the engine's back and its report is exact.
    assert report.total == 750
    events = await outbox(conn)
    assert len(events) == len({e["id"] for e in events}) == 750  # tags, manifests, blobs


async def test_a_step_that_keeps_deadlocking_gives_up_with_a_storage_error(
    db: asyncpg.Pool[asyncpg.Record], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A transaction that loses every race is retried a bounded number of times with
    growing, capped waits, then reported as a StorageError instead of spinning forever."""
    engine = Engine(PoolDatabase(db), EngineConfig(), clock=FixedClock())
    attempts = 0
    waits: list[float] = []

    async def no_sleep(delay: float) -> None:
        waits.append(delay)

    monkeypatch.setattr("collector.engine.runner.asyncio.sleep", no_sleep)

    async def always_deadlocks(conn: object) -> StepResult:
        nonlocal attempts
        attempts += 1
        raise asyncpg.DeadlockDetectedError("deadlock detected")

    with pytest.raises(StorageError, match="kept conflicting"):
        await engine._run(always_deadlocks)  # the retry loop itself is under test
    assert attempts == 10
    assert len(waits) == 9
    assert waits[1] > waits[0]
    assert max(waits) <= 5.0 * 1.25


async def test_a_step_that_deadlocks_once_is_replayed(db: asyncpg.Pool[asyncpg.Record]) -> None:
    """One lost race costs one replay of the whole transaction, nothing more."""
    engine = Engine(PoolDatabase(db), EngineConfig(), clock=FixedClock())
    attempts = 0

    async def deadlocks_once(conn: object) -> StepResult:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise asyncpg.DeadlockDetectedError("deadlock detected")
        return StepResult(progress=3)

    result = await engine._run(deadlocks_once)  # the retry loop itself is under test
    assert (attempts, result.progress) == (2, 3)
