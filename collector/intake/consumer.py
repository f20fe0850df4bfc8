"""The requests consumer: records in, durable work or dead letters out, offsets committed after.

A :class:`~collector.partitioned_consumer.PartitionedConsumer` hands this stage
each fetched batch of a partition, in order. A record counts as completed once
its work is durable in PostgreSQL or its dead letter is acknowledged; each
partition commits the lowest offset not yet completed. Too much due work in the
queue pauses every partition until the workers catch up (backpressure).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import asyncpg
import structlog
from aiokafka import TopicPartition

from collector import metrics
from collector.backoff import Retrying
from collector.clock import Clock
from collector.config import Settings
from collector.db.connector import PoolDatabase
from collector.dead_letters import DeadLetters
from collector.errors import DatabaseUnavailable, Unstorable
from collector.intake.admission import Refusal, Verdict, admit
from collector.logging import bound_causes
from collector.partitioned_consumer import PartitionedConsumer
from collector.work import queue
from events import DecodeError, Request, decode_request

log = structlog.get_logger(__name__)

#: How much of an unreadable record's key its log lines show.
_KEY_SHOWN = 200


class Intake:
    """``run()`` until ``stop()``: consume the requests topic in the collector's group."""

    def __init__(
        self,
        settings: Settings,
        pool: asyncpg.Pool[asyncpg.Record],
        *,
        clock: Clock,
        on_admitted: Callable[[], None],
        dead_letters: DeadLetters,
    ) -> None:
        self._settings = settings
        self._database = PoolDatabase(pool)
        self._clock = clock
        self._on_admitted = on_admitted
        self._stopping = asyncio.Event()
        self._dead_letters = dead_letters
        self._consumer = PartitionedConsumer(
            settings,
            topic=settings.topic_requests,
            group_id=settings.group_id,
            handle=self._handle,
            stopping=self._stopping,
            name="intake",
            max_records=settings.intake_poll_records,
            backpressure=self._backpressure,
        )
        #: Records received, requests accepted, duplicates dropped.
        self.received = 0
        self.accepted = 0
        self.duplicates = 0

    def stop(self) -> None:
        self._stopping.set()

    @property
    def in_group(self) -> bool:
        """Whether the group has given this member its (possibly no) partitions."""
        return self._consumer.in_group

    async def idle(self) -> bool:
        """Nothing in hand and nothing left to read: see ``PartitionedConsumer.caught_up``."""
        return await self._consumer.caught_up()

    async def run(self) -> None:
        log.info(
            "intake_started", topic=self._settings.topic_requests, group=self._settings.group_id
        )
        try:
            await self._consumer.run()
        finally:
            log.info(
                "intake_stopped",
                received=self.received,
                accepted=self.accepted,
                duplicates=self.duplicates,
            )

    # -- one partition's batch -------------------------------------------------

    async def _handle(self, partition: TopicPartition, records: list[Any]) -> None:
        self.received += len(records)
        decoded: list[tuple[Any, Request]] = []
        for record in records:
            try:
                request = decode_request(
                    key=record.key,
                    value=record.value,
                    headers=record.headers,
                    max_value_bytes=self._settings.max_request_bytes,
                )
            except DecodeError as exc:
                # Admit what came before first: the refusal must not overtake it.
                await self._admit(partition, decoded)
                decoded = []
                with _bound(record):
                    await self._dead_letters.send(record, exc.reason, exc.detail, None)
                self._consumer.completed(partition, [record.offset])
            else:
                decoded.append((record, request))
        await self._admit(partition, decoded)

    async def _admit(self, partition: TopicPartition, decoded: list[tuple[Any, Request]]) -> None:
        """Make ``decoded`` durable in one transaction, waiting out database outages."""
        if not decoded:
            return
        database = Retrying("database", self._stopping)

        async def attempt() -> list[Verdict]:
            async with self._database.transaction() as conn:
                return await admit(conn, decoded, self._clock.now_ms())

        try:
            with bound_causes(request.event.id for _, request in decoded):
                verdicts = await database.call(attempt)
        except Unstorable as exc:
            database.succeeded()  # it answered: an outage before this one is over
            await self._admit_apart(partition, decoded, exc)
            return
        for (record, request), verdict in zip(decoded, verdicts, strict=True):
            with _bound(record, request):
                if isinstance(verdict, Refusal):
                    await self._dead_letters.send(
                        record, verdict.reason, verdict.detail, request.event.id
                    )
                elif verdict == "duplicate":
                    self.duplicates += 1
                    metrics.REQUESTS_RECEIVED.labels("duplicate").inc()
                    log.info("request_duplicate")
                else:
                    self.accepted += 1
                    metrics.REQUESTS_RECEIVED.labels("accepted").inc()
                    log.info("request_accepted", type=request.event.type)
            self._consumer.completed(partition, [record.offset])
        if "accepted" in verdicts:
            self._on_admitted()

    async def _admit_apart(
        self, partition: TopicPartition, decoded: list[tuple[Any, Request]], error: Unstorable
    ) -> None:
        """The database refused to store a batch: admit its records one by one, in
        order, and dead-letter those it refuses (reason ``unstorable``). Decoding
        refuses every such value known; this is the safety net that keeps one record
        from stopping its partition on every restart."""
        if len(decoded) > 1:
            for one in decoded:
                await self._admit(partition, [one])
            return
        [(record, request)] = decoded
        detail = f"the database cannot store this request: {error.__cause__ or error}"
        with _bound(record, request):
            await self._dead_letters.send(record, "unstorable", detail, request.event.id)
        self._consumer.completed(partition, [record.offset])

    # -- backpressure ----------------------------------------------------------

    async def _backpressure(self, paused: bool) -> bool:
        """Pause while too much work is due, resume once it has halved."""
        limit = self._settings.intake_max_backlog
        try:
            async with self._database.connection() as conn:
                backlog = await queue.count_due(conn, self._clock.now_ms())
        except DatabaseUnavailable:
            return paused  # the batches in flight wait the outage out and say so
        metrics.REQUESTS_DUE.set(backlog)
        if not paused and backlog >= limit:
            metrics.INTAKE_PAUSED.set(1)
            log.info("intake_paused", backlog=backlog)
            return True
        if paused and backlog <= limit // 2:
            metrics.INTAKE_PAUSED.set(0)
            log.info("intake_resumed", backlog=backlog)
            return False
        return paused


def _bound(record: Any, request: Request | None = None) -> contextlib.AbstractContextManager[None]:
    """Bind a record (an aiokafka ConsumerRecord) to every line logged meanwhile: its
    offset, and its request as far as it could be read: the event id (also the causation
    id its removal events and dead letter carry), the source and the repository; of a
    record that is no request, the repository its key names, if it is text."""
    if request is not None:
        return structlog.contextvars.bound_contextvars(
            offset=record.offset,
            event_id=request.event.id,
            causation_id=request.event.id,
            source=request.event.source,
            repository=request.key,
        )
    fields: dict[str, Any] = {"offset": record.offset}
    if record.key:
        with contextlib.suppress(UnicodeDecodeError):
            fields["repository"] = record.key.decode()[:_KEY_SHOWN]
    return structlog.contextvars.bound_contextvars(**fields)
