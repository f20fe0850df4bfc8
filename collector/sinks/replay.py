"""Reading a topic from the start (or from a time) up to where it ended when we began.

No consumer group: partitions are assigned by hand and nothing is committed,
so a replay leaves no trace on the broker and two replays read the same records.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import UnknownTopicOrPartitionError, for_code

from collector.backoff import close_quietly
from collector.config import Settings
from collector.errors import BrokerUnavailable, ConfigError
from collector.kafka import client_options, reach_broker, translated

log = structlog.get_logger(__name__)

_POLL_MS = 200


@dataclass(frozen=True, slots=True)
class Record:
    """One record as replayed: where it sits, and what it holds."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes | None], ...]


async def replay(settings: Settings, topic: str, *, since: datetime | None = None) -> list[Record]:
    """Every record of ``topic`` (from the first one produced at or after ``since``) up to
    the end offsets observed at start, ordered by partition and offset."""
    with translated(f"replay {topic}"):
        partitions = await _partitions(settings, topic)
        consumer = AIOKafkaConsumer(
            group_id=None, enable_auto_commit=False, **client_options(settings)
        )
        try:
            await reach_broker(consumer.start, wait_s=settings.connect_wait_s)
            records = await _read(consumer, topic, partitions, since, settings.connect_wait_s)
        finally:
            await close_quietly(consumer.stop(), "consumer")
    log.info("topic_replayed", topic=topic, records=len(records))
    return records


async def _partitions(settings: Settings, topic: str) -> list[int]:
    """The topic's partition ids, asked of the broker (a consumer without a group or a
    subscription keeps no metadata for it)."""
    admin = AIOKafkaAdminClient(**client_options(settings))
    try:
        await reach_broker(admin.start, wait_s=settings.connect_wait_s)
        [described] = await admin.describe_topics([topic])
    finally:
        await admin.close()
    if described["error_code"] == UnknownTopicOrPartitionError.errno:
        raise ConfigError(f"no topic {topic} on the broker (collector migrate creates it)")
    if described["error_code"]:
        error = for_code(described["error_code"]).__name__
        raise BrokerUnavailable(f"cannot describe topic {topic}: {error}")
    return sorted(partition["partition"] for partition in described["partitions"])


async def _read(
    consumer: Any, topic: str, partitions: list[int], since: datetime | None, stall_s: float
) -> list[Record]:
    tps = [TopicPartition(topic, partition) for partition in partitions]
    consumer.assign(tps)
    end: dict[Any, int] = await consumer.end_offsets(tps)
    if since is None:
        start: dict[Any, int] = await consumer.beginning_offsets(tps)
    else:
        found = await consumer.offsets_for_times({tp: int(since.timestamp() * 1000) for tp in tps})
        # None: nothing was produced at or after that time.
        start = {tp: end[tp] if found[tp] is None else found[tp].offset for tp in tps}
    for tp in tps:
        consumer.seek(tp, start[tp])
    remaining = {tp for tp in tps if start[tp] < end[tp]}
    records: list[Record] = []
    loop = asyncio.get_running_loop()
    progress_at = loop.time()
    while remaining:
        batches = await consumer.getmany(*remaining, timeout_ms=_POLL_MS)
        for tp, batch in batches.items():
            # Records produced since the replay began are not part of it.
            records.extend(
                Record(r.partition, r.offset, r.key, r.value, tuple(r.headers))
                for r in batch
                if r.offset < end[tp]
            )
            progress_at = loop.time()
        for tp in list(remaining):
            if await consumer.position(tp) >= end[tp]:
                remaining.discard(tp)
                consumer.pause(tp)
        if remaining and loop.time() - progress_at > stall_s:
            raise BrokerUnavailable(f"replay of {topic} made no progress for {stall_s:g} s")
    return sorted(records, key=lambda r: (r.partition, r.offset))
