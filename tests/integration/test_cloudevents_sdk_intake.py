"""A request written by the CloudEvents Python SDK, end to end through the real Kafka
broker and PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest
from cloudevents.v1 import kafka
from cloudevents.v1.http import CloudEvent

from collector.config import Settings
from tests.integration.test_service import requests_table, run_service
from tests.pipeline import (
    Record,
    expired_repositories,
    pipeline_settings,
    produce,
    read_topic,
    topics,
)
from tests.registry import FixedClock, Registry


@pytest.fixture
async def settings(database_url: str) -> AsyncIterator[Settings]:
    async with topics(pipeline_settings(database_url)) as settings:
        yield settings


async def test_an_sdk_structured_mode_sweep_is_served(
    db: asyncpg.Pool[asyncpg.Record], registry: Registry, settings: Settings, clock: FixedClock
) -> None:
    """A repo-sweep the SDK wrote in structured mode (the data's media type in the
    content-type header, not the envelope) is accepted and collects its repository,
    its removals naming it as causationid; nothing is dead-lettered."""
    (sweep,) = await expired_repositories(registry, 1)
    event = CloudEvent(
        {
            "type": sweep.event_type,
            "source": "/tests/cloudevents-sdk",
            "datacontenttype": "application/json",
            "partitionkey": sweep.repository_path,
        },
        sweep.model_dump(mode="json"),
    )
    message = kafka.to_structured(event)
    assert message.headers == {"content-type": b"application/json"}
    assert isinstance(message.key, str)
    assert isinstance(message.value, bytes)
    record = Record(message.key.encode(), message.value, list(message.headers.items()))
    await produce(settings.topic_requests, [record])

    summary = await run_service(settings, clock)

    assert (summary.accepted, summary.refused, summary.outcomes) == (1, {}, {"collected": 1})
    assert [row["event_id"] for row in await requests_table(db)] == [event["id"]]
    removals = await read_topic(settings.topic_removals)
    assert removals
    assert {r.event["causationid"] for r in removals} == {event["id"]}
    assert await read_topic(settings.topic_dead_letter, partitions=1) == []
