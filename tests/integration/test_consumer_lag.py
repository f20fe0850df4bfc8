"""registry_gc_consumer_lag on a real broker: it follows what waits on the topic, a
paused partition included (aiokafka does not fetch it, so only the broker knows)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka import TopicPartition
from prometheus_client import REGISTRY

from collector import partitioned_consumer
from collector.partitioned_consumer import PartitionedConsumer
from tests.pipeline import Record, pipeline_settings, produce, topics, until


def observed(topic: str) -> bool:
    """Whether the lag of the topic's partition 0 was reported (after a poll that
    applied the backpressure)."""
    labels = {"topic": topic, "partition": "0"}
    return REGISTRY.get_sample_value("registry_gc_consumer_lag", labels) is not None


def lag(topic: str) -> float:
    """The lag summed over the topic's partitions (0 where none is reported)."""
    return sum(
        REGISTRY.get_sample_value("registry_gc_consumer_lag", {"topic": topic, "partition": p})
        or 0.0
        for p in ("0", "1", "2")
    )


async def test_the_lag_grows_on_a_paused_topic_and_falls_as_records_are_done(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(partitioned_consumer, "_LAG_EVERY_S", 0.1)
    paused = True
    handled = asyncio.Event()

    async def backpressure(_: bool) -> bool:
        return paused

    async def handle(partition: TopicPartition, records: list[Any]) -> None:
        consumer.completed(partition, [record.offset for record in records])
        handled.set()

    async with topics(pipeline_settings()) as settings:
        stopping = asyncio.Event()
        consumer = PartitionedConsumer(
            settings,
            topic=settings.topic_requests,
            group_id=settings.group_id,
            handle=handle,
            stopping=stopping,
            name="lag-test",
            max_records=100,
            backpressure=backpressure,
        )
        running = asyncio.create_task(consumer.run())
        try:
            # Joined, paused and the lag looked at once: nothing can be fetched now.
            await until(lambda: observed(settings.topic_requests))
            await produce(settings.topic_requests, [Record(b"k", b"v", ()) for _ in range(40)])
            await until(lambda: lag(settings.topic_requests) == 40)
            assert not handled.is_set()  # paused: nothing was fetched
            paused = False
            await until(lambda: lag(settings.topic_requests) == 0)
            assert handled.is_set()
        finally:
            stopping.set()
            await asyncio.wait_for(running, 15)
