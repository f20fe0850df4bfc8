"""Kafka helpers for pipeline tests: fresh topics, requests in, every record of a topic out."""

from __future__ import annotations

import asyncio
import inspect
import json
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import ConsumerRecord

from collector.config import Settings
from collector.kafka import client_options, ensure_topics
from events import RepoSweep, RequestData, request_event, to_record
from tests.registry import Registry

WAIT_S = 30.0
BOOTSTRAP = "127.0.0.1:9092"

Headers = Sequence[tuple[str, bytes]]


@dataclass(frozen=True)
class Record:
    key: bytes | None
    value: bytes | None
    headers: Headers = ()


@dataclass(frozen=True)
class Received:
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]

    @property
    def event(self) -> dict[str, Any]:
        assert self.value is not None
        decoded: dict[str, Any] = json.loads(self.value)
        return decoded


def pipeline_settings(database_url: str | None = None, **overrides: Any) -> Settings:
    """Settings with topics and a group of their own, on ``database_url`` (the default
    one, unused, for what reads Kafka only)."""
    suffix = uuid.uuid4().hex[:12]
    values: dict[str, Any] = {
        **({} if database_url is None else {"database_url": database_url}),
        "kafka_bootstrap": BOOTSTRAP,
        "topic_requests": f"test.requests.{suffix}",
        "topic_removals": f"test.removals.{suffix}",
        "topic_dead_letter": f"test.dead-letter.{suffix}",
        "group_id": f"test.collector.{suffix}",
        "topic_partitions": 3,
        "relay_poll_interval_s": 0.2,
        "work_poll_interval_s": 0.2,
        "connect_wait_s": 5.0,
        **overrides,
    }
    return Settings(**values)


@asynccontextmanager
async def topics(settings: Settings) -> AsyncIterator[Settings]:
    """The settings' topics, created now and deleted afterwards."""
    await asyncio.wait_for(ensure_topics(settings, wait_s=5.0), WAIT_S)
    try:
        yield settings
    finally:
        admin = AIOKafkaAdminClient(request_timeout_ms=20_000, **client_options(settings))
        await asyncio.wait_for(admin.start(), WAIT_S)
        try:
            names = [settings.topic_requests, settings.topic_removals, settings.topic_dead_letter]
            await asyncio.wait_for(admin.delete_topics(names), WAIT_S)
        finally:
            await admin.close()


def request(data: RequestData, *, event_id: str | None = None) -> Record:
    """A well-formed request record, keyed by its repository."""
    value, headers = to_record(request_event(data, source="/tests", event_id=event_id))
    return Record(data.repository_path.encode(), value, headers)


def connection(via: Settings | None) -> dict[str, Any]:
    """How to reach the broker ``via`` some settings' (the shared test broker by default)."""
    return {"bootstrap_servers": BOOTSTRAP} if via is None else client_options(via)


async def produce(
    topic: str, records: Sequence[Record], *, via: Settings | None = None, **options: Any
) -> None:
    """Send ``records`` in order and wait for the broker's acknowledgement."""
    producer = AIOKafkaProducer(acks="all", **connection(via), **options)
    await asyncio.wait_for(producer.start(), WAIT_S)
    try:
        for record in records:
            await producer.send_and_wait(
                topic, record.value, key=record.key, headers=list(record.headers)
            )
    finally:
        await producer.stop()


async def read_topic(
    topic: str, partitions: int = 3, *, via: Settings | None = None
) -> list[Received]:
    """Every record of ``topic`` (of so many partitions) up to its current end, by
    partition then offset."""
    consumer = AIOKafkaConsumer(enable_auto_commit=False, **connection(via))
    await asyncio.wait_for(consumer.start(), WAIT_S)
    try:
        assigned = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(assigned)
        await consumer.seek_to_beginning(*assigned)
        ends = await consumer.end_offsets(assigned)
        received: list[Received] = []
        async with asyncio.timeout(WAIT_S):
            while [p for p in assigned if await consumer.position(p) < ends[p]]:
                batches = await consumer.getmany(timeout_ms=200)
                for records in batches.values():
                    received += [
                        Received(r.partition, r.offset, r.key, r.value, list(r.headers))
                        for r in records
                    ]
        return sorted(received, key=lambda r: (r.partition, r.offset))
    finally:
        await consumer.stop()


async def until(condition: Callable[[], bool | Awaitable[bool]], within: float = WAIT_S) -> None:
    """Wait until ``condition()`` holds (a plain or async predicate on state owned by
    another task, process or library); fail after ``within`` seconds."""
    async with asyncio.timeout(within):
        while True:
            holds = condition()
            if await holds if inspect.isawaitable(holds) else holds:
                return
            await asyncio.sleep(0.05)


async def expired_repositories(
    registry: Registry, count: int, *, layered: bool = False
) -> list[RepoSweep]:
    """``count`` repositories acme/repo0… with one expired tag each (on a manifest with
    a layer of its own when ``layered``), and the sweep requests that collect them."""
    acme = await registry.namespace("acme")
    sweeps = []
    for number in range(count):
        repository = await registry.repository(acme, f"repo{number}")
        blobs = (await registry.blob(),) if layered else ()
        await registry.expired_tag(repository, await registry.manifest(repository, blobs=blobs))
        sweeps.append(
            RepoSweep(namespace="acme", repository=f"repo{number}", repository_id=repository)
        )
    return sweeps


def free_port() -> int:
    """A TCP port nothing listens on now, for a metrics listener."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def undecodable_record(
    topic: str, offset: int, key: bytes = b"acme/web"
) -> ConsumerRecord[bytes, bytes]:
    """A record of the requests topic that is no JSON at all, as the intake receives one
    (for the dead letter it causes)."""
    value = b"{not json"
    return ConsumerRecord(
        topic=topic,
        partition=0,
        offset=offset,
        timestamp=0,
        timestamp_type=0,
        key=key,
        value=value,
        checksum=None,
        serialized_key_size=len(key),
        serialized_value_size=len(value),
        headers=(),
    )
