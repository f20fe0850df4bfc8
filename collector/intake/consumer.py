"""The requests consumer: records in, durable work or dead letters out, offsets committed after.

Each fetched batch of a partition is handled by one task while that partition
is paused, so a partition's records are admitted in order and the poll loop
never stalls (aiokafka would leave the group after ``max_poll_interval_ms``).
A record counts as completed once its work is durable in PostgreSQL or its
dead letter is acknowledged; each partition commits the lowest offset not yet
completed. Too much due work in the queue pauses every partition until the
workers catch up (backpressure). On revocation the partitions' tasks finish
(or are cancelled after a timeout, their records uncommitted) and their
offsets are committed before the group moves on.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import asyncpg
import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError

from collector import metrics
from collector.backoff import Backoff, Outage
from collector.clock import Clock
from collector.config import Settings
from collector.db.connector import DISCONNECTS
from collector.dead_letters import DeadLetters
from collector.errors import BrokerUnavailable, CollectorError, DatabaseUnavailable
from collector.intake.admission import Refusal, admit
from collector.intake.offsets import OffsetTracker
from collector.kafka import client_options, reach_broker
from collector.work import queue
from events import DecodeError, Request, decode_request

log = structlog.get_logger(__name__)

#: The database refused a record's values themselves (a data exception, a size
#: limit): no retry can help, and the record would stop its partition on every
#: restart. Decoding refuses every such value known; this is the safety net.
_UNSTORABLE = (asyncpg.DataError, asyncpg.ProgramLimitExceededError)

_POLL_MS = 200
#: How long a revoked partition's batch may take before it is abandoned uncommitted.
_HANDOVER_S = 10.0


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
        self._pool = pool
        self._clock = clock
        self._on_admitted = on_admitted
        self._topic = settings.topic_requests
        self._stopping = asyncio.Event()
        self._dead_letters = dead_letters
        self._tracker: OffsetTracker[TopicPartition] = OffsetTracker()
        self._tasks: dict[TopicPartition, asyncio.Task[None]] = {}
        self._consumer: Any = None
        self._throttled = False
        self._joined = False
        self._failure: Exception | None = None
        #: Records received, requests accepted, duplicates dropped.
        self.received = 0
        self.accepted = 0
        self.duplicates = 0

    def stop(self) -> None:
        self._stopping.set()

    async def idle(self) -> bool:
        """Joined, nothing in flight, every assigned partition read to its end, and every
        other partition of the topic committed to its end by the group: a member that
        died holds its partitions until its session expires, and what they hold unread
        is work too."""
        consumer = self._consumer
        if consumer is None or not self._joined or self._tasks:
            return False
        assigned = consumer.assignment()
        for partition in assigned:
            end = consumer.highwater(partition)
            if end is None or await consumer.position(partition) < end:
                return False
        numbers = consumer.partitions_for_topic(self._topic) or set()
        others = [TopicPartition(self._topic, n) for n in sorted(numbers)]
        others = [tp for tp in others if tp not in assigned]
        if others:
            starts = await consumer.beginning_offsets(others)
            ends = await consumer.end_offsets(others)
            for partition in others:
                # Never committed: read from the start of what retention kept.
                committed = await consumer.committed(partition)
                if (starts[partition] if committed is None else committed) < ends[partition]:
                    return False
        return True

    async def run(self) -> None:
        consumer = AIOKafkaConsumer(
            group_id=self._settings.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            **client_options(self._settings),
        )
        consumer.subscribe([self._topic], listener=_HandOver(self))
        try:
            await reach_broker(consumer.start, wait_s=self._settings.connect_wait_s)
        except BaseException:
            await consumer.stop()
            raise
        self._consumer = consumer
        log.info("intake_started", topic=self._topic, group=self._settings.group_id)
        try:
            await self._poll(consumer)
        finally:
            await self._shut_down(consumer)

    async def _poll(self, consumer: Any) -> None:
        backoff, broker = Backoff(), Outage("broker")
        while not self._stopping.is_set():
            try:
                batches = await consumer.getmany(
                    timeout_ms=_POLL_MS, max_records=self._settings.batch_size
                )
            except KafkaError as exc:
                if not exc.retriable:
                    raise CollectorError(f"cannot consume {self._topic}: {exc!r}") from exc
                broker.failed(exc)
                await asyncio.sleep(backoff.next())
                continue
            if broker.recovered():
                backoff = Backoff()
            for partition, records in batches.items():
                self._start(partition, records)
            self._reap()
            await self._commit(self._tracker.committable())
            await self._regulate()

    # -- one partition's batch -------------------------------------------------

    def _start(self, partition: TopicPartition, records: list[Any]) -> None:
        self._consumer.pause(partition)
        self._tracker.fetched(partition, (record.offset for record in records))
        self.received += len(records)
        self._tasks[partition] = asyncio.create_task(
            self._handle(partition, records), name=f"intake-{partition.partition}"
        )

    async def _handle(self, partition: TopicPartition, records: list[Any]) -> None:
        try:
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
                    await self._dead_letters.send(record, exc.reason, exc.detail, None)
                    self._tracker.completed(partition, [record.offset])
                else:
                    decoded.append((record, request))
            await self._admit(partition, decoded)
        except (BrokerUnavailable, DatabaseUnavailable) as exc:
            # Stopping during an outage: the rest stays uncommitted, for the next run.
            if not self._stopping.is_set():
                self._failure = exc
        except Exception as exc:  # surfaced by the poll loop (_reap)
            self._failure = exc
        finally:
            self._tasks.pop(partition, None)
            if not self._throttled and partition in self._consumer.assignment():
                self._consumer.resume(partition)

    async def _admit(self, partition: TopicPartition, decoded: list[tuple[Any, Request]]) -> None:
        """Make ``decoded`` durable in one transaction, waiting out database outages."""
        if not decoded:
            return
        backoff, database = Backoff(), Outage("database")
        while True:
            try:
                async with self._pool.acquire() as conn, conn.transaction():
                    verdicts = await admit(conn, decoded, self._clock.now_ms())
                break
            except _UNSTORABLE as exc:
                database.recovered()  # it answered: an outage before this one is over
                await self._admit_apart(partition, decoded, exc)
                return
            except DISCONNECTS as exc:
                database.failed(exc)
                if self._stopping.is_set():
                    raise DatabaseUnavailable("stopping while the database is away") from exc
                await asyncio.sleep(backoff.next())
        database.recovered()
        for (record, request), verdict in zip(decoded, verdicts, strict=True):
            if isinstance(verdict, Refusal):
                await self._dead_letters.send(
                    record, verdict.reason, verdict.detail, request.event.id
                )
            elif verdict == "duplicate":
                self.duplicates += 1
                metrics.REQUESTS_RECEIVED.labels("duplicate").inc()
                log.info("request_duplicate", event_id=request.event.id, offset=record.offset)
            else:
                self.accepted += 1
                metrics.REQUESTS_RECEIVED.labels("accepted").inc()
                log.info(
                    "request_accepted",
                    event_id=request.event.id,
                    type=request.event.type,
                    repository=request.key,
                    partition=record.partition,
                    offset=record.offset,
                )
            self._tracker.completed(partition, [record.offset])
        if "accepted" in verdicts:
            self._on_admitted()

    async def _admit_apart(
        self, partition: TopicPartition, decoded: list[tuple[Any, Request]], error: Exception
    ) -> None:
        """The database refused to store a batch: admit its records one by one, in
        order, and dead-letter those it refuses (reason ``unstorable``)."""
        if len(decoded) > 1:
            for one in decoded:
                await self._admit(partition, [one])
            return
        [(record, request)] = decoded
        detail = f"the database cannot store this request: {error}"
        await self._dead_letters.send(record, "unstorable", detail, request.event.id)
        self._tracker.completed(partition, [record.offset])

    def _reap(self) -> None:
        """Surface the first failed batch task: never swallow a background error."""
        if (error := self._failure) is not None:
            if isinstance(error, CollectorError):
                raise error
            raise CollectorError(f"intake failed: {error!r}") from error

    # -- offsets, backpressure, hand-over -----------------------------------------

    async def _commit(self, positions: dict[TopicPartition, int]) -> None:
        if not positions:
            return
        try:
            await asyncio.shield(self._consumer.commit(positions))
        except CommitFailedError as exc:
            # The group moved on: the new owner reads from the last commit and
            # drops what we admitted as duplicates.
            log.warning("commit_failed", error=repr(exc))
        except KafkaError as exc:
            log.warning("commit_deferred", error=repr(exc))
            return
        self._tracker.committed(positions)

    async def _regulate(self) -> None:
        """Pause every partition while too much work is due, resume once it has halved."""
        limit = self._settings.intake_max_backlog
        try:
            async with self._pool.acquire() as conn:
                backlog = await queue.count_due(conn, self._clock.now_ms())
        except DISCONNECTS:
            return  # the batches in flight wait the outage out and say so
        metrics.REQUESTS_DUE.set(backlog)
        assigned = self._consumer.assignment()
        if not self._throttled and backlog >= limit:
            self._throttled = True
            metrics.INTAKE_PAUSED.set(1)
            log.info("intake_paused", backlog=backlog)
        elif self._throttled and backlog <= limit // 2:
            self._throttled = False
            metrics.INTAKE_PAUSED.set(0)
            if idle := [p for p in assigned if p not in self._tasks]:
                self._consumer.resume(*idle)
            log.info("intake_resumed", backlog=backlog)
        if self._throttled and assigned:
            self._consumer.pause(*assigned)  # again after a rebalance, which resets pauses

    async def hand_over(self, revoked: set[TopicPartition]) -> None:
        """Finish (or abandon) the revoked partitions' batches and commit their offsets."""
        tasks = [task for partition, task in self._tasks.items() if partition in revoked]
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=_HANDOVER_S)
            for task in late:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        await self._commit(self._tracker.committable(revoked))
        self._tracker.forget(revoked)
        if revoked:
            log.info("partitions_revoked", partitions=sorted(p.partition for p in revoked))

    @property
    def in_group(self) -> bool:
        """Whether the group has given this member its (possibly no) partitions."""
        return self._joined

    def joined(self, assigned: set[TopicPartition]) -> None:
        self._joined = True
        log.info("partitions_assigned", partitions=sorted(p.partition for p in assigned))

    async def _shut_down(self, consumer: Any) -> None:
        """Let batches in flight finish, commit, leave the group."""
        with contextlib.suppress(KafkaError, CollectorError):
            await self.hand_over(set(self._tasks))
            await self._commit(self._tracker.committable())
        try:
            await asyncio.wait_for(consumer.stop(), _HANDOVER_S)
        except (KafkaError, TimeoutError) as exc:
            log.warning("consumer_stop_failed", error=repr(exc))
        self._consumer = None
        log.info(
            "intake_stopped",
            received=self.received,
            accepted=self.accepted,
            duplicates=self.duplicates,
        )


class _HandOver(ConsumerRebalanceListener):  # type: ignore[misc]  # untyped library base
    def __init__(self, intake: Intake) -> None:
        self._intake = intake

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._intake.hand_over(set(revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self._intake.joined(set(assigned))
