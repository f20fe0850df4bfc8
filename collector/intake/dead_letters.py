"""The dead-letter topic: every refused record, whole, with the reason (CONTRACT §2.3)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from collector import metrics
from collector.backoff import Backoff
from collector.config import Settings
from collector.errors import BrokerUnavailable
from collector.kafka import DEAD_LETTER_MAX_BYTES, client_options
from events import rejection_event, to_record

log = structlog.get_logger(__name__)

#: Dead-letter ids derive from the refused record's position, so refusing a
#: redelivered record again publishes a duplicate that consumers drop.
_ID_NAMESPACE = uuid.UUID("0b6f7a54-41c3-4c0e-9d5e-6a1f3a8d2c10")


class DeadLetters:
    """Publishes refusals, waiting out broker outages (the record stays uncommitted)."""

    def __init__(self, settings: Settings, stopping: asyncio.Event) -> None:
        self._settings = settings
        self._topic = settings.topic_dead_letter
        self._stopping = stopping
        self._producer: Any = None
        #: Partitions' tasks share one producer; only one may create it.
        self._starting = asyncio.Lock()
        #: Dead letters the broker acknowledged, by reason.
        self.sent: dict[str, int] = {}

    async def send(self, record: Any, reason: str, detail: str, causation_id: str | None) -> None:
        """Publish the dead letter of ``record`` (an aiokafka ConsumerRecord) and wait for
        the broker's acknowledgement; raise BrokerUnavailable only when stopping."""
        event = rejection_event(
            reason=reason,
            detail=detail,
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            key=record.key,
            value=record.value,
            causation_id=causation_id,
            event_id=str(
                uuid.uuid5(_ID_NAMESPACE, f"{record.topic}/{record.partition}/{record.offset}")
            ),
        )
        value, headers = to_record(event)
        backoff = Backoff()
        while True:
            try:
                producer = await self._started()
                await producer.send_and_wait(self._topic, value, key=record.key, headers=headers)
                break
            except KafkaError as exc:
                log.warning("dead_letter_failed", error=repr(exc), reason=reason)
                await self._reset()
                if self._stopping.is_set():
                    raise BrokerUnavailable(f"cannot publish a dead letter: {exc!r}") from exc
                await asyncio.sleep(backoff.next())
        self.sent[reason] = self.sent.get(reason, 0) + 1
        metrics.REQUESTS_RECEIVED.labels("refused").inc()
        metrics.DEAD_LETTERS.labels(reason).inc()
        log.warning(
            "request_refused",
            reason=reason,
            detail=detail,
            partition=record.partition,
            offset=record.offset,
            dead_letter_id=event.id,
        )

    async def stop(self) -> None:
        await self._reset()

    async def _started(self) -> Any:
        async with self._starting:
            return await self._start()

    async def _start(self) -> Any:
        if self._producer is None:
            producer = AIOKafkaProducer(
                acks="all",
                enable_idempotence=True,
                # A refused value of up to 1 MiB, base64 encoded, inside its envelope.
                max_request_size=DEAD_LETTER_MAX_BYTES,
                **client_options(self._settings),
            )
            try:
                await producer.start()
            except BaseException:
                await producer.stop()
                raise
            self._producer = producer
        return self._producer

    async def _reset(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            try:
                await asyncio.wait_for(producer.stop(), 10)
            except (KafkaError, TimeoutError) as exc:
                log.warning("producer_stop_failed", error=repr(exc))
