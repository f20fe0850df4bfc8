"""A claim's locks live on its connection: when that connection is lost, the worker stops
the work in hand at once, so that no request is ever worked by two workers at once."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from collector.config import Settings
from collector.engine import Engine, Report
from collector.service import Service
from events import RepoDeleted
from tests.integration.test_service import requests_table
from tests.pipeline import pipeline_settings, produce, request, topics
from tests.registry import FixedClock, Registry

#: The session holding a claim: the one whose transaction locked a pending request row
#: (the row's xmax is the locking transaction's id).
CLAIMING = """
    SELECT a.pid FROM gc.request q JOIN pg_stat_activity a ON a.backend_xid = q.xmax
    WHERE q.finished_at IS NULL
"""


@pytest.fixture
async def settings(database_url: str) -> AsyncIterator[Settings]:
    # Small engine batches: the purge takes hundreds of transactions, long enough to be
    # cut in the middle.
    async with topics(pipeline_settings(database_url, batch_size=5)) as settings:
        yield settings


async def doomed_repository(registry: Registry, settings: Settings, *, tags: int) -> int:
    """acme/doomed, marked for deletion, with ``tags`` tagged manifests (each with a
    blob): a purge of hundreds of transactions, long enough to be cut in the middle;
    its `repo-deleted` is on the requests topic."""
    acme = await registry.namespace("acme")
    doomed = await registry.repository(acme, "doomed", state="marked_for_deletion")
    for n in range(tags):
        manifest = await registry.manifest(doomed, blobs=(await registry.blob(),))
        await registry.tag(doomed, manifest, f"v{n}")
    await produce(
        settings.topic_requests,
        [request(RepoDeleted(namespace="acme", repository="doomed", repository_id=doomed))],
    )
    return doomed


async def end_claims_once(db: asyncpg.Pool[asyncpg.Record], *, removed: int) -> bool:
    """Once the outbox holds ``removed`` events, end the sessions holding claims (as a
    server restart or a network cut would); True once one was ended."""
    while True:
        await asyncio.sleep(0.01)
        if await db.fetchval("SELECT count(*) FROM gc.outbox") >= removed:
            pids = [row["pid"] for row in await db.fetch(CLAIMING)]
            for pid in pids:
                await db.execute("SELECT pg_terminate_backend($1)", pid)
            if pids:
                return True


async def test_a_lost_claim_stops_its_purge_before_another_worker_takes_it(
    db: asyncpg.Pool[asyncpg.Record],
    registry: Registry,
    settings: Settings,
    clock: FixedClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The server ends the session holding a purge's claim midway. The purge in hand is
    cancelled, the request is claimed again and purged to the end: never two purges of
    the repository at once, and the request's outcome is `purged`, not `gone`."""
    doomed = await doomed_repository(registry, settings, tags=600)
    running: Counter[int] = Counter()
    overlaps: list[int] = []
    started: list[int] = []
    original = Engine.purge

    async def tracked(self: Engine, repository_id: int, **kwargs: Any) -> Report:
        running[repository_id] += 1
        started.append(repository_id)
        if running[repository_id] > 1:
            overlaps.append(repository_id)
        try:
            return await original(self, repository_id, **kwargs)
        finally:
            running[repository_id] -= 1

    monkeypatch.setattr(Engine, "purge", tracked)
    service = asyncio.create_task(
        Service(settings, exit_when_idle_s=0.5, clock=clock).run(), name="service"
    )
    async with asyncio.timeout(60):
        killed = await end_claims_once(db, removed=300)  # the purge is well under way
        summary = await service

    assert killed
    assert len(started) >= 2, "the request must have been claimed again"
    assert overlaps == []
    assert summary.outcomes == {"purged": 1}
    (row,) = await requests_table(db)
    assert row["outcome"] == "purged"
    assert await db.fetchval("SELECT count(*) FROM repository WHERE id = $1", doomed) == 0
    purged = await db.fetchval(
        "SELECT count(*) FROM gc.outbox WHERE event_type = 'registry.gc.repo-purged'"
    )
    assert purged == 1


async def test_a_claim_taken_over_waits_for_the_lost_claims_purge_to_unwind(
    db: asyncpg.Pool[asyncpg.Record],
    registry: Registry,
    settings: Settings,
    clock: FixedClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Cancelled is not yet ended: the server releases a lost claim's locks at once, while
    its purge still unwinds (slowly, as on a loaded machine). Another worker claiming the
    request meanwhile waits for that purge to end before it starts its own."""
    doomed = await doomed_repository(registry, settings, tags=300)
    running = 0
    overlaps = 0
    unwound = 0
    original = Engine.purge

    async def slow_to_unwind(self: Engine, repository_id: int, **kwargs: Any) -> Report:
        nonlocal running, overlaps, unwound
        running += 1
        overlaps += running > 1
        try:
            return await original(self, repository_id, **kwargs)
        except asyncio.CancelledError:
            await asyncio.sleep(1.0)  # longer than the workers' poll (0.2 s)
            unwound += 1
            raise
        finally:
            running -= 1

    monkeypatch.setattr(Engine, "purge", slow_to_unwind)
    service = asyncio.create_task(
        Service(settings, exit_when_idle_s=0.5, clock=clock).run(), name="service"
    )
    async with asyncio.timeout(60):
        killed = await end_claims_once(db, removed=100)
        summary = await service

    assert killed
    assert unwound == 1, "the lost claim's purge must have been cancelled"
    assert overlaps == 0
    assert summary.outcomes == {"purged": 1}
    assert await db.fetchval("SELECT count(*) FROM repository WHERE id = $1", doomed) == 0
