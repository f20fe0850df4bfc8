"""`collector run` through a broker outage, on a second broker of its own that the test
stops and starts (the shared one serves every other test)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
import structlog

from collector.service import Service
from collector.work import queue
from collector.work.queue import WorkItem
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

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "services"
PORT, CONTROLLER_PORT = 19092, 19093
SPARE = f"127.0.0.1:{PORT}"


class SpareBroker:
    """A single-node broker on other ports and its own data, from the shared jars."""

    def __init__(self, state: Path) -> None:
        self._env = {
            **os.environ,
            "COLLECTOR_SERVICES_DIR": str(state),
            "COLLECTOR_KAFKA_PORT": str(PORT),
            "COLLECTOR_KAFKA_CONTROLLER_PORT": str(CONTROLLER_PORT),
        }

    async def _services(self, command: str) -> None:
        process = await asyncio.create_subprocess_exec(
            str(SCRIPT), command, env=self._env, stderr=asyncio.subprocess.PIPE
        )
        _, stderr = await asyncio.wait_for(process.communicate(), 120)
        assert process.returncode == 0, stderr.decode()

    async def up(self) -> None:
        await self._services("kafka-up")

    async def down(self) -> None:
        await self._services("kafka-down")


@pytest.fixture
async def spare_broker(tmp_path: Path) -> AsyncIterator[SpareBroker]:
    broker = SpareBroker(tmp_path / "services")
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
    settings = pipeline_settings(database_url, kafka_bootstrap=SPARE)
    async with topics(settings):
        service = Service(settings, clock=clock)
        with structlog.testing.capture_logs() as logs:
            running = asyncio.create_task(service.run())
            await produce(
                settings.topic_requests, [request(s) for s in sweeps[:5]], bootstrap=SPARE
            )
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
            await produce(
                settings.topic_requests, [request(s) for s in sweeps[10:]], bootstrap=SPARE
            )
            await until(lambda: _count_is(db, 15), within=90)
            await until(lambda: _all_published(db), within=60)
            service.stop()
            await asyncio.wait_for(running, 60)
        published = await read_topic(settings.topic_removals, bootstrap=SPARE)

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
