"""The real Kafka broker: what aiokafka does against it, and how the collector creates topics."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from collector.config import Settings
from collector.errors import BrokerUnavailable, CollectorError
from collector.kafka import ensure_topics

CONTENT_TYPE = ("content-type", b"application/cloudevents+json; charset=utf-8")
#: Upper bound for any single wait on the broker: a broken broker fails, never hangs.
WAIT_S = 30.0


def bootstrap() -> str:
    return os.environ.get("COLLECTOR_KAFKA_BOOTSTRAP", "127.0.0.1:9092")


def unique(prefix: str) -> str:
    return f"{prefix}.{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def admin() -> AsyncIterator[Any]:
    client = AIOKafkaAdminClient(bootstrap_servers=bootstrap(), request_timeout_ms=20_000)
    await asyncio.wait_for(client.start(), WAIT_S)
    try:
        yield client
    finally:
        await client.close()


async def delete_topics(admin: Any, topics: list[str]) -> None:
    existing = set(await asyncio.wait_for(admin.list_topics(), WAIT_S))
    if doomed := [topic for topic in topics if topic in existing]:
        await asyncio.wait_for(admin.delete_topics(doomed), WAIT_S)


async def partition_counts(admin: Any, topics: list[str]) -> dict[str, int]:
    """Partitions per topic, once the broker's metadata shows every one of them."""
    deadline = asyncio.get_running_loop().time() + WAIT_S
    while True:
        described = await asyncio.wait_for(admin.describe_topics(topics), WAIT_S)
        counts = {
            entry["topic"]: len(entry["partitions"])
            for entry in described
            if entry["error_code"] == 0 and entry["partitions"]
        }
        if set(counts) == set(topics) or asyncio.get_running_loop().time() > deadline:
            return counts
        await asyncio.sleep(0.1)


def consumer(topic: str, group: str) -> Any:
    return AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap(),
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )


async def receive(source: Any, count: int, *, settle_s: float = 0.0) -> list[Any]:
    """At least ``count`` records (or what came before the deadline), then ``settle_s`` more."""
    received: list[Any] = []

    async def poll(until: float, enough: int | None) -> None:
        while asyncio.get_running_loop().time() < until:
            batches = await source.getmany(timeout_ms=200)
            for records in batches.values():
                received.extend(records)
            if enough is not None and len(received) >= enough:
                return

    loop = asyncio.get_running_loop()
    await asyncio.wait_for(poll(loop.time() + WAIT_S, count), WAIT_S + 5)
    # Anything more than expected shows up here rather than going unnoticed.
    await asyncio.wait_for(poll(loop.time() + settle_s, None), settle_s + 5)
    return received


def by_partition(records: list[Any]) -> dict[int, list[tuple[bytes, bytes]]]:
    grouped: dict[int, list[tuple[bytes, bytes]]] = {}
    for record in records:
        grouped.setdefault(record.partition, []).append((record.key, record.value))
    return grouped


async def test_produce_consume_commit_and_resume_in_a_group(admin: Any) -> None:
    """Records keep key, value, headers and partition order; a group resumes after its commit."""
    topic, group = unique("test.smoke"), unique("test.smoke.group")
    await asyncio.wait_for(admin.create_topics([NewTopic(topic, 2, 1)]), WAIT_S)
    try:
        assert (await partition_counts(admin, [topic])) == {topic: 2}
        sent = [
            (b"ns/a", b'{"n": 0}'),
            (b"ns/c", b'{"n": 1}'),
            (b"ns/a", b'{"n": 2}'),
            (b"ns/c", b'{"n": 3}'),
            (b"ns/a", b'{"n": 4}'),
        ]
        producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap(), acks="all", enable_idempotence=True
        )
        await asyncio.wait_for(producer.start(), WAIT_S)
        try:
            placed = [
                await asyncio.wait_for(
                    producer.send_and_wait(topic, value, key=key, headers=[CONTENT_TYPE]), WAIT_S
                )
                for key, value in sent
            ]
            # The same key always lands on the same partition.
            partition_of = {
                key: meta.partition for (key, _), meta in zip(sent, placed, strict=True)
            }
            assert all(
                meta.partition == partition_of[key]
                for (key, _), meta in zip(sent, placed, strict=True)
            )
            expected: dict[int, list[tuple[bytes, bytes]]] = {}
            for (key, value), meta in zip(sent, placed, strict=True):
                expected.setdefault(meta.partition, []).append((key, value))
            # murmur2, as in the Java client, puts these two keys on different partitions.
            assert sorted(expected) == [0, 1]

            first = consumer(topic, group)
            await asyncio.wait_for(first.start(), WAIT_S)
            try:
                records = await receive(first, len(sent), settle_s=0.5)
                assert len(records) == len(sent)
                assert by_partition(records) == expected
                assert all(list(record.headers) == [CONTENT_TYPE] for record in records)
                for partition in expected:
                    offsets = [r.offset for r in records if r.partition == partition]
                    assert offsets == sorted(offsets)
                await asyncio.wait_for(first.commit(), WAIT_S)
                for partition, items in expected.items():
                    tp = TopicPartition(topic, partition)
                    committed = await asyncio.wait_for(first.committed(tp), WAIT_S)
                    last = max(r.offset for r in records if r.partition == partition)
                    assert committed == last + 1, (partition, items)
            finally:
                await first.stop()

            late = (b"ns/a", b'{"n": 5}')
            await asyncio.wait_for(
                producer.send_and_wait(topic, late[1], key=late[0], headers=[CONTENT_TYPE]),
                WAIT_S,
            )
        finally:
            await producer.stop()

        second = consumer(topic, group)
        await asyncio.wait_for(second.start(), WAIT_S)
        try:
            resumed = await receive(second, 1, settle_s=1.0)
        finally:
            await second.stop()
        assert [(r.key, r.value) for r in resumed] == [late]
    finally:
        await delete_topics(admin, [topic])


async def test_ensure_topics_creates_missing_topics_once(admin: Any) -> None:
    """ensure_topics creates requests/removals with the configured partitions and the
    dead-letter topic with one, returns their names, and creates nothing the second time."""
    suffix = uuid.uuid4().hex[:12]
    settings = Settings(
        kafka_bootstrap=bootstrap(),
        topic_requests=f"test.requests.{suffix}",
        topic_removals=f"test.removals.{suffix}",
        topic_dead_letter=f"test.dead-letter.{suffix}",
        topic_partitions=3,
    )
    names = [settings.topic_requests, settings.topic_removals, settings.topic_dead_letter]
    try:
        created = await asyncio.wait_for(ensure_topics(settings, wait_s=5.0), WAIT_S)
        assert sorted(created) == sorted(names)
        assert (await partition_counts(admin, names)) == {
            settings.topic_requests: 3,
            settings.topic_removals: 3,
            settings.topic_dead_letter: 1,
        }
        assert (await asyncio.wait_for(ensure_topics(settings, wait_s=5.0), WAIT_S)) == []
    finally:
        await delete_topics(admin, names)


async def test_ensure_topics_without_a_broker_raises_broker_unavailable() -> None:
    """ensure_topics against an address nobody listens on gives up with BrokerUnavailable."""
    settings = Settings(kafka_bootstrap="127.0.0.1:1", topic_partitions=3)
    with pytest.raises(BrokerUnavailable):
        await asyncio.wait_for(ensure_topics(settings, wait_s=0.5), WAIT_S)


async def test_ensure_topics_reports_a_topic_the_broker_refused(admin: Any) -> None:
    """A per-topic refusal (replication factor 3 on one broker) is an error, not a success."""
    suffix = uuid.uuid4().hex[:12]
    settings = Settings(
        kafka_bootstrap=bootstrap(),
        topic_requests=f"test.requests.{suffix}",
        topic_removals=f"test.removals.{suffix}",
        topic_dead_letter=f"test.dead-letter.{suffix}",
        topic_replication_factor=3,
    )
    with pytest.raises(CollectorError, match="InvalidReplicationFactorError"):
        await asyncio.wait_for(ensure_topics(settings, wait_s=5.0), WAIT_S)
    assert set(await admin.list_topics()).isdisjoint(
        {settings.topic_requests, settings.topic_removals, settings.topic_dead_letter}
    )
