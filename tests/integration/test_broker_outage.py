"""`collector run` through a broker outage, on a second broker of its own that the test
stops and starts (the shared one serves every other test)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
import structlog

from collector.service import Service
from collector.work import queue
from collector.work.queue import WorkItem
from tests.brokers import SpareBroker
from tests.pipeline import (
    expired_repositories,
    pipeline_settings,
    produce,
    read_topic,
    request,
    topics,
    until,
)
from tests.registry import FixedClock, Registry

PORT, CONTROLLER_PORT = 19092, 19093


@pytest.fixture
async def spare_broker(tmp_path: Path) -> AsyncIterator[SpareBroker]:
    broker = SpareBroker(tmp_path / "services", PORT, CONTROLLER_PORT)
    await broker.up()
    try:
        yield broker
    finally:
        await broker.down()


async def finished(db: asyncpg.Pool[asyncpg.Record]) -> int:
    count: int = await db.fetchval("SELECT count(*) FROM gc.request WHERE outcome IS NOT NULL")
    return count


async def test_the_service_rides_out_a_broker_outage_and_loses_nothing(
    db: asyncpg.Pool[asyncpg.Record],
    registry: Registry,
    database_url: str,
    spare_broker: SpareBroker,
    clock: FixedClock,
) -> None:
    """With the broker gone, the service keeps collecting what it already holds (its
    events wait in the outbox); when the broker is back it consumes again and
    publishes every event: nothing lost, no stage failed, no restart needed."""
    sweeps = await expired_repositories(registry, 15)
    settings = pipeline_settings(database_url, kafka_bootstrap=spare_broker.bootstrap)
    async with topics(settings):
        service = Service(settings, clock=clock)
        with structlog.testing.capture_logs() as logs:
            running = asyncio.create_task(service.run())
            await produce(settings.topic_requests, [request(s) for s in sweeps[:5]], via=settings)
            await until(lambda: _count_is(db, 5))

            await spare_broker.down()
            async with db.acquire() as conn:  # work admitted before the outage, say
                await queue.admit(
                    conn,
                    [
                        WorkItem(
                            source="/t",
                            event_id=f"held-{s.repository}",
                            event_type="repo-sweep",
                            repository_id=s.repository_id,
                            repository_path=s.repository_path,
                        )
                        for s in sweeps[5:10]
                    ],
                    clock.ms,
                )
            await until(lambda: _count_is(db, 10))
            pending = await db.fetchval("SELECT count(*) FROM gc.outbox WHERE published_at IS NULL")

            await spare_broker.up()
            await produce(settings.topic_requests, [request(s) for s in sweeps[10:]], via=settings)
            await until(lambda: _count_is(db, 15), within=90)
            await until(lambda: _all_published(db), within=60)
            service.stop()
            await asyncio.wait_for(running, 60)
        published = await read_topic(settings.topic_removals, via=settings)

    assert pending > 0, "the outage held events back in the outbox"
    assert not [e for e in logs if e["log_level"] == "error"], "no stage failed"
    outbox = {str(row["event_id"]) for row in await db.fetch("SELECT event_id FROM gc.outbox")}
    assert len(outbox) == 15 * 2  # a tag and a manifest per repository
    assert {r.event["id"] for r in published} == outbox
    outcomes = await db.fetch("SELECT outcome FROM gc.request")
    assert [row["outcome"] for row in outcomes] == ["collected"] * 15


async def _count_is(db: asyncpg.Pool[asyncpg.Record], count: int) -> bool:
    return await finished(db) == count


async def _all_published(db: asyncpg.Pool[asyncpg.Record]) -> bool:
    pending: int = await db.fetchval("SELECT count(*) FROM gc.outbox WHERE published_at IS NULL")
    return pending == 0
