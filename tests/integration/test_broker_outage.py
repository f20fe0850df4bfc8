"""`collector run` through a broker outage, on a second broker of its own that the test
stops and starts (the shared one serves every other test)."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import structlog
from aiokafka import TopicPartition
from prometheus_client import REGISTRY

from collector.dead_letters import DeadLetters
from collector.kafka import producer
from collector.service import Service
from collector.work import queue
from collector.work.queue import WorkItem
from tests.brokers import SpareBroker, running_broker
from tests.pipeline import (
    expired_repositories,
    pipeline_settings,
    produce,
    read_topic,
    request,
    topics,
    undecodable_record,
    until,
)
from tests.registry import FixedClock, Registry

PORT, CONTROLLER_PORT = 19092, 19093


@pytest.fixture
async def spare_broker(tmp_path: Path) -> AsyncIterator[SpareBroker]:
    async with running_broker(tmp_path / "services", PORT, CONTROLLER_PORT) as broker:
        yield broker


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
    settings = pipeline_settings(
        database_url, kafka_bootstrap=spare_broker.bootstrap, kafka_produce_timeout_s=1
    )
    async with topics(settings):
        service = Service(settings, clock=clock)
        unavailable_before = broker_unavailable()
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
            await until(lambda: broker_unavailable() > unavailable_before, within=10)

            await spare_broker.up()
            await produce(settings.topic_requests, [request(s) for s in sweeps[10:]], via=settings)
            await until(lambda: _count_is(db, 15), within=90)
            await until(lambda: _all_published(db), within=60)
            service.stop()
            await asyncio.wait_for(running, 60)
        published = await read_topic(settings.topic_removals, via=settings)

    assert pending > 0, "the outage held events back in the outbox"
    assert not [e for e in logs if e["log_level"] == "error"], "no stage failed"
    # The relay's deliveries waited past COLLECTOR_KAFKA_PRODUCE_TIMEOUT_S: logged once
    # per stage that noticed, each followed by its recovery.
    assert broker_unavailable() == unavailable_before, "the gauge is back with the broker"
    broker = [e["event"] for e in logs if e["event"].startswith("broker_")]
    assert 1 <= broker.count("broker_unavailable") == broker.count("broker_recovered") <= 2
    assert broker[-1] == "broker_recovered"
    outbox = {str(row["event_id"]) for row in await db.fetch("SELECT event_id FROM gc.outbox")}
    assert len(outbox) == 15 * 2  # a tag and a manifest per repository
    assert {r.event["id"] for r in published} == outbox
    outcomes = await db.fetch("SELECT outcome FROM gc.request")
    assert [row["outcome"] for row in outcomes] == ["collected"] * 15


def broker_unavailable() -> float:
    """The stages that find the broker unavailable now (registry_gc_unavailable)."""
    return REGISTRY.get_sample_value("registry_gc_unavailable", {"dependency": "broker"}) or 0


async def _count_is(db: asyncpg.Pool[asyncpg.Record], count: int) -> bool:
    return await finished(db) == count


async def _all_published(db: asyncpg.Pool[asyncpg.Record]) -> bool:
    pending: int = await db.fetchval("SELECT count(*) FROM gc.outbox WHERE published_at IS NULL")
    return pending == 0


async def test_a_dead_letter_waits_out_a_broker_outage(spare_broker: SpareBroker) -> None:
    """A refusal that cannot be published is retried (the outage logged once) until the
    broker is back, then published whole: the intake holds its offset meanwhile."""
    settings = pipeline_settings(kafka_bootstrap=spare_broker.bootstrap, kafka_produce_timeout_s=2)
    async with topics(settings):
        letters = DeadLetters(settings, stopping=asyncio.Event())
        try:
            with structlog.testing.capture_logs() as logs:
                first = undecodable_record(settings.topic_requests, 0, key=b"acme/app")
                await letters.send(first, "malformed-json", "not JSON", None)
                await spare_broker.down()
                second = undecodable_record(settings.topic_requests, 1, key=b"acme/app")
                sending = asyncio.create_task(
                    letters.send(second, "malformed-json", "not JSON", None)
                )
                await until(lambda: "broker_unavailable" in [e["event"] for e in logs])
                assert not sending.done(), "published with the broker down"

                await spare_broker.up()
                await asyncio.wait_for(sending, 90)
        finally:
            await letters.stop()
        received = await read_topic(settings.topic_dead_letter, partitions=1, via=settings)

    events = [entry["event"] for entry in logs]
    assert events.count("broker_unavailable") == 1
    assert events.count("broker_recovered") == 1
    assert {r.event["data"]["offset"] for r in received} == {0, 1}
    assert {r.event["data"]["value"] for r in received} == {"{not json"}
    assert letters.sent == {"malformed-json": 2}


class _Count(logging.Handler):
    """Counts aiokafka's records by message template."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: Counter[str] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        self.messages[str(record.msg)] += 1


async def test_a_producer_whose_broker_shuts_down_mid_send_does_not_spin(
    spare_broker: SpareBroker,
) -> None:
    """A broker shut down cleanly while sends flow answers its last metadata request
    with no leader for the partitions; aiokafka 0.14 alone then asks for metadata again
    the moment the (refused) update fails: about 3,500 updates and 7,000 error lines a
    second, a core at 100%, until the batches expire. Our producers wait the retry
    backoff (100 ms) after a failed update: a few dozen tries in the same time."""
    settings = pipeline_settings(
        kafka_bootstrap=spare_broker.bootstrap, topic_partitions=6, kafka_produce_timeout_s=10
    )
    counted = _Count()
    aiokafka_log = logging.getLogger("aiokafka")
    async with topics(settings):
        made = producer(settings, linger_ms=5)
        await made.start()
        in_flight: set[asyncio.Future[Any]] = set()

        async def pump() -> None:
            sent = 0
            while True:
                if len(in_flight) >= 300:
                    await asyncio.sleep(0.01)
                    continue
                delivery = await made.send(settings.topic_removals, b"x" * 200, key=b"%d" % sent)
                in_flight.add(delivery)
                delivery.add_done_callback(in_flight.discard)
                sent += 1
                if sent % 50 == 0:
                    await asyncio.sleep(0.005)

        pumping = asyncio.create_task(pump())
        try:
            await asyncio.sleep(2)
            await spare_broker.down()  # SIGTERM: a controlled shutdown, sends still flowing
            pumping.cancel()
            leaders = [
                made.client.cluster.leader_for_partition(TopicPartition(settings.topic_removals, p))
                for p in range(6)
            ]
            aiokafka_log.addHandler(counted)
            await asyncio.sleep(3)
        finally:
            aiokafka_log.removeHandler(counted)
            pumping.cancel()
            await asyncio.gather(*in_flight, return_exceptions=True)  # expire within 10 s
            await asyncio.wait_for(made.stop(), 30)
            await spare_broker.up()  # for the topics' deletion

    assert -1 in leaders, f"the trigger: a partition left without a leader ({leaders})"
    failed_updates = counted.messages["Unable to update metadata from %s"]
    assert 0 < failed_updates <= 60, counted.messages
