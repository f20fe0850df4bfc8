"""What collector/kafka.py relies on inside aiokafka to contain its metadata busy loop."""

from __future__ import annotations

import inspect

from aiokafka import AIOKafkaProducer
from aiokafka.client import AIOKafkaClient

from collector.config import Settings
from collector.kafka import producer


async def test_the_aiokafka_method_our_producers_wrap_is_still_there() -> None:
    """Our producers wrap the client's private _metadata_update(cluster_metadata, topics):
    an aiokafka that renamed it or changed its arguments must fail here, not in
    production (pyproject pins aiokafka below 0.15 for the same reason)."""
    method = AIOKafkaClient._metadata_update
    assert inspect.iscoroutinefunction(method)
    assert list(inspect.signature(method).parameters) == ["self", "cluster_metadata", "topics"]
    made = producer(Settings(kafka_bootstrap="127.0.0.1:1"))
    try:
        assert isinstance(made, AIOKafkaProducer)
        assert isinstance(made.client, AIOKafkaClient)
        assert made.client._metadata_update.__name__ == "backing_off"
    finally:
        await made.stop()  # never started: releases what it holds
