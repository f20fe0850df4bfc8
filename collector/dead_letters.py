"""The dead-letter topic: every refused record, whole, with the reason (docs/events.md)."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from typing import Any

import structlog

from collector import kafka, metrics
from collector.backoff import Retrying, close_quietly
from collector.config import Settings
from collector.errors import BrokerUnavailable, RecordTooLarge
from collector.kafka import DEAD_LETTER_MAX_BYTES
from collector.logging import unbound
from events import CloudEvent, RejectionReason, rejection_event, to_record

log = structlog.get_logger(__name__)

#: Dead-letter ids derive from the refused record's position, so refusing a
#: redelivered record again publishes a duplicate that consumers drop.
_ID_NAMESPACE = uuid.UUID("0b6f7a54-41c3-4c0e-9d5e-6a1f3a8d2c10")


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a request was read: what a dead letter names when the record itself is
    gone from memory (the key is the request's repository path)."""

    topic: str
    partition: int
    offset: int
    key: bytes


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

    async def send(
        self, record: Any, reason: RejectionReason, detail: str, causation_id: str | None
    ) -> None:
        """Publish the dead letter of ``record`` (an aiokafka ConsumerRecord) and wait for
        the broker's acknowledgement, through broker outages; raise BrokerUnavailable
        when stopping meanwhile, and a CollectorError the broker will not change its
        mind on (an authorization refused, say).

        A dead letter too large for the topic (one created by hand, with the
        broker's default size) is published without the value, and says where
        the value stays: the refused record itself, on the requests topic.
        """
        letter = self._letter(record, reason, detail, causation_id)
        try:
            await self._publish(record, letter)
        except RecordTooLarge:
            size = len(record.value or b"")
            detail += (
                f"; the value ({size} bytes) is not kept here, it exceeds the dead-letter"
                f" topic's message size: it stays at {record.topic} partition"
                f" {record.partition} offset {record.offset}"
            )
            letter = self._letter(record, reason, detail, causation_id, keep_value=False)
            await self._publish(record, letter)
        metrics.REQUESTS_RECEIVED.labels("refused").inc()
        self._sent(record, reason, detail, letter)

    async def send_later(
        self, origin: Origin, reason: RejectionReason, detail: str, event_id: str
    ) -> None:
        """Publish the dead letter of a request admitted earlier and refused only when its
        turn came. Its value is not kept in the database: the letter says where it stays."""
        detail += (
            f"; the value is not kept here: it stays at {origin.topic} partition"
            f" {origin.partition} offset {origin.offset}"
        )
        letter = self._letter(origin, reason, detail, event_id, keep_value=False)
        await self._publish(origin, letter)
        self._sent(origin, reason, detail, letter)

    def _sent(self, record: Any, reason: RejectionReason, detail: str, letter: CloudEvent) -> None:
        self.sent[reason] = self.sent.get(reason, 0) + 1
        metrics.DEAD_LETTERS.labels(reason).inc()
        log.warning(
            "request_refused",
            reason=reason,
            detail=detail,
            partition=record.partition,
            offset=record.offset,
            dead_letter_id=letter.id,
        )

    def _letter(
        self,
        record: Any,
        reason: RejectionReason,
        detail: str,
        causation_id: str | None,
        *,
        keep_value: bool = True,
    ) -> CloudEvent:
        return rejection_event(
            reason=reason,
            detail=detail,
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            key=record.key,
            value=record.value if keep_value else None,
            causation_id=causation_id,
            event_id=str(
                uuid.uuid5(_ID_NAMESPACE, f"{record.topic}/{record.partition}/{record.offset}")
            ),
        )

    async def _publish(self, record: Any, letter: CloudEvent) -> None:
        """Send until the broker acknowledges, waiting out its outages; a letter too
        large is the caller's."""
        value, headers = to_record(letter)
        broker = Retrying("broker", self._stopping)
        while True:
            try:
                with kafka.translated(f"publish a dead letter to {self._topic}"):
                    producer = await self._started()
                    delivery = await producer.send(
                        self._topic, value, key=record.key, headers=headers
                    )
                    await kafka.acknowledged(
                        [delivery], settings=self._settings, broker=broker.outage
                    )
            except BrokerUnavailable as exc:
                await self._reset()
                if await broker.failed(exc):
                    raise
            else:
                broker.succeeded()
                return

    async def stop(self) -> None:
        await self._reset()

    async def _started(self) -> Any:
        async with self._starting:
            return await self._start()

    async def _start(self) -> Any:
        if self._producer is None:
            # A refused value of up to 1 MiB, base64 encoded, inside its envelope.
            producer = kafka.producer(self._settings, max_request_size=DEAD_LETTER_MAX_BYTES)
            try:
                # Started on the first refusal, whose ids its background tasks must not keep.
                await asyncio.create_task(producer.start(), context=unbound())
            except BaseException:
                await close_quietly(producer.stop(), "producer")
                raise
            self._producer = producer
        return self._producer

    async def _reset(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            await close_quietly(producer.stop(), "producer")
