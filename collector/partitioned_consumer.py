"""One member of a Kafka consumer group, handing each partition's batches to a stage.

The intake (requests) and the blob deleter (removals) run a
:class:`PartitionedConsumer` and supply what is theirs: the handler of one
partition's batch, and the intake its backpressure decision. What it does for
them:

* **Order per partition, never a stalled poll.** Each fetched batch of a
  partition is handled by a task of its own while that partition is paused, so
  a partition's records are handled in order and the poll loop goes on (aiokafka
  would leave the group after ``max_poll_interval_ms``).
* **Commit what is done.** The handler reports the records it completed
  (:meth:`PartitionedConsumer.completed`); each partition commits the lowest
  offset not completed yet (:class:`OffsetTracker`), after every poll.
* **Backpressure.** A stage's ``backpressure`` decision, asked after every poll,
  pauses every partition until it says otherwise; the poll goes on, so the member
  stays in the group.
* **Hand-over.** Before the group takes partitions away, their batches finish
  (or are cancelled after :data:`HANDOVER_S`, their records uncommitted) and their
  offsets are committed. Stopping does the same for every batch in hand, then
  leaves the group.
* **Errors.** A broker outage is waited out; a batch that failed stops the
  member with its error, except an outage met while stopping: what that batch had
  not completed stays uncommitted, for the next run.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError

from collector import metrics
from collector.backoff import Retrying, close_quietly, transient
from collector.config import Settings
from collector.errors import BrokerUnavailable, CollectorError
from collector.kafka import client_options, reach_broker, translated

log = structlog.get_logger(__name__)

_POLL_MS = 200
#: How long a batch may take to finish once its partition is revoked (or the member
#: stops) before it is abandoned, its records uncommitted.
HANDOVER_S = 10.0
#: How long a commit may take before it is tried again with the next one.
_COMMIT_TIMEOUT_S = 10.0
#: How often the broker is asked whether it answers and the lag is looked at, and how
#: long each question may take.
_LAG_EVERY_S = 5.0
_LAG_TIMEOUT_S = 5.0

#: Handles one partition's batch of records, in offset order, and reports those done
#: through :meth:`PartitionedConsumer.completed`.
Handler = Callable[[TopicPartition, list[Any]], Awaitable[None]]
#: Given whether every partition is paused for backpressure now, whether it should be.
Backpressure = Callable[[bool], Awaitable[bool]]


class PartitionedConsumer:
    """``run()`` until ``stopping`` is set (or, with ``exit_when_idle``, until no record
    came for that many seconds): consume ``topic`` in ``group_id`` from the earliest
    offset, each partition's batches handed to ``handle``, at most ``max_records`` records
    a poll. ``name`` names the batch tasks and the error a failed batch stops the member
    with."""

    def __init__(
        self,
        settings: Settings,
        *,
        topic: str,
        group_id: str,
        handle: Handler,
        stopping: asyncio.Event,
        name: str,
        max_records: int,
        backpressure: Backpressure | None = None,
        exit_when_idle: float | None = None,
    ) -> None:
        self._settings = settings
        self._topic = topic
        self._group_id = group_id
        self._handle = handle
        self._stopping = stopping
        self._name = name
        self._max_records = max_records
        self._backpressure = backpressure
        self._exit_when_idle = exit_when_idle
        self._broker = Retrying("broker", stopping)
        self._tracker: OffsetTracker[TopicPartition] = OffsetTracker()
        self._tasks: dict[TopicPartition, asyncio.Task[None]] = {}
        self._client: Any = None
        self._paused = False
        self._joined = False
        self._failure: Exception | None = None
        #: When the lag was last looked at (loop time).
        self._lag_at = -_LAG_EVERY_S
        #: When records last came, a batch last finished or partitions were last
        #: assigned: the idle clock (None before the group assigned this member).
        self._active_at: float | None = None

    @property
    def in_group(self) -> bool:
        """Whether the group has given this member its (possibly no) partitions."""
        return self._joined

    @property
    def broker_available(self) -> bool:
        """Whether this member is not waiting out a broker outage."""
        return not self._broker.outage.down

    def completed(self, partition: TopicPartition, offsets: Iterable[int]) -> None:
        """The records at ``offsets`` are done: their offsets may be committed."""
        self._tracker.completed(partition, offsets)

    async def run(self) -> None:
        client = AIOKafkaConsumer(
            group_id=self._group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            **client_options(self._settings),
        )
        client.subscribe([self._topic], listener=_Listener(self))
        try:
            await reach_broker(client.start, wait_s=self._settings.connect_wait_s)
        except BaseException:
            await close_quietly(client.stop(), "consumer")
            raise
        self._client = client
        try:
            await self._poll()
        finally:
            await self._shut_down()
        self._reap()  # a batch that failed while the member stopped

    async def caught_up(self) -> bool:
        """Joined, no batch in hand, every assigned partition read to its end, and every
        other partition of the topic committed to its end by the group: a member that
        died holds its partitions until its session expires, and what they hold unread
        is work too. A broker error (a partition gone in a rebalance meanwhile) is
        raised, translated."""
        client = self._client
        if client is None or not self._joined or self._tasks:
            return False
        with translated(f"read the positions of {self._topic}"):
            assigned = client.assignment()
            for partition in assigned:
                end = client.highwater(partition)
                if end is None or await client.position(partition) < end:
                    return False
            numbers = client.partitions_for_topic(self._topic) or set()
            others = [TopicPartition(self._topic, n) for n in sorted(numbers)]
            others = [tp for tp in others if tp not in assigned]
            if others:
                starts = await client.beginning_offsets(others)
                ends = await client.end_offsets(others)
                for partition in others:
                    # Never committed: read from the start of what retention kept.
                    committed = await client.committed(partition)
                    if (starts[partition] if committed is None else committed) < ends[partition]:
                        return False
        return True

    async def _poll(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._stopping.is_set():
            try:
                with translated(f"consume {self._topic}"):
                    batches = await self._client.getmany(
                        timeout_ms=_POLL_MS, max_records=self._max_records
                    )
            except BrokerUnavailable as exc:
                await self._broker.failed(exc)
                continue
            # No error says nothing: aiokafka's fetches wait a broker out silently.
            # Whether it answers is asked every _LAG_EVERY_S (_broker_answers).
            if batches:
                self._active_at = loop.time()
            for partition, records in batches.items():
                self._start(partition, records)
            self._reap()
            await self._commit(self._tracker.committable())
            await self._regulate()
            await self._observe_lag()
            if not batches and self._idle():
                return

    def _idle(self) -> bool:
        """Whether nothing happened for ``exit_when_idle`` seconds."""
        return (
            self._exit_when_idle is not None
            and self._active_at is not None  # not idle before the group assigned us
            and not self._tasks
            and asyncio.get_running_loop().time() - self._active_at >= self._exit_when_idle
        )

    # -- one partition's batch -------------------------------------------------

    def _start(self, partition: TopicPartition, records: list[Any]) -> None:
        self._client.pause(partition)
        first = partition not in self._tracker
        self._tracker.fetched(partition, (record.offset for record in records))
        if first:  # read from the group's position: nothing to commit until it moves
            self._tracker.committed({partition: records[0].offset})
        self._tasks[partition] = asyncio.create_task(
            self._run_batch(partition, records), name=f"{self._name}-{partition.partition}"
        )

    async def _run_batch(self, partition: TopicPartition, records: list[Any]) -> None:
        try:
            # On every line of the batch's handling; this task is the partition's alone.
            with structlog.contextvars.bound_contextvars(
                topic=partition.topic, partition=partition.partition
            ):
                await self._handle(partition, records)
        except Exception as exc:  # surfaced by the poll loop (_reap)
            # Stopping during an outage: the rest stays uncommitted, for the next run.
            if not (transient(exc) and self._stopping.is_set()) and self._failure is None:
                self._failure = exc
        finally:
            self._tasks.pop(partition, None)
            self._active_at = asyncio.get_running_loop().time()
            if not self._paused and partition in self._client.assignment():
                self._client.resume(partition)

    def _reap(self) -> None:
        """Surface the first failed batch: never swallow a background error."""
        if (error := self._failure) is not None:
            if isinstance(error, CollectorError):
                raise error
            raise CollectorError(f"{self._name} failed: {error!r}") from error

    # -- offsets, backpressure, hand-over --------------------------------------

    async def _commit(self, positions: dict[TopicPartition, int]) -> None:
        if not positions:
            return
        try:
            with translated(f"commit offsets of {self._topic}"):
                await asyncio.wait_for(
                    asyncio.shield(self._client.commit(positions)), _COMMIT_TIMEOUT_S
                )
        except (CollectorError, TimeoutError) as exc:
            if not isinstance(exc.__cause__, CommitFailedError):
                log.warning("commit_deferred", error=repr(exc))  # the next commit retries
                return
            # The group moved on: the new owner reads from the last commit and drops
            # what we handled as duplicates.
            log.warning("commit_failed", error=repr(exc))
        else:
            log.debug(
                "offsets_committed", offsets={str(tp.partition): o for tp, o in positions.items()}
            )
        self._tracker.committed(positions)

    async def _observe_lag(self) -> None:
        """Each assigned partition's lag, every :data:`_LAG_EVERY_S`: its end offset (asked
        of the broker: a paused partition is not fetched, and its end would stand still)
        minus the offset the group committed. Informational: a failure skips a round.
        Asked only of a broker that answers (:meth:`_broker_answers`)."""
        loop = asyncio.get_running_loop()
        if loop.time() - self._lag_at < _LAG_EVERY_S:
            return
        self._lag_at = loop.time()
        if not await self._broker_answers():
            return
        assigned = sorted(self._client.assignment())
        if not assigned:
            return
        try:
            with translated(f"read the end offsets of {self._topic}"):
                async with asyncio.timeout(_LAG_TIMEOUT_S):
                    ends = await self._client.end_offsets(assigned)
                    done = {p: self._tracker.committed_at(p) for p in assigned}
                    for partition in [p for p, at in done.items() if at is None]:
                        done[partition] = await self._client.committed(partition)
                    if unread := [p for p, at in done.items() if at is None]:
                        # Never committed: all that retention kept is to be read.
                        done.update(await self._client.beginning_offsets(unread))
        except (CollectorError, TimeoutError) as exc:  # revoked meanwhile, broker away
            log.debug("lag_unread", error=repr(exc))
            return
        for partition in assigned:
            lag = metrics.CONSUMER_LAG.labels(self._topic, str(partition.partition))
            lag.set(max(ends[partition] - (done[partition] or 0), 0))

    async def _broker_answers(self) -> bool:
        """Whether the broker tells the end of the topic's first partition in time: the
        broker outage (logged, counted, and what ``broker_available`` and /readyz say)
        starts and ends here, asked whether or not records flow and partitions are
        assigned to this member."""
        try:
            with translated(f"read the end offsets of {self._topic}"):
                async with asyncio.timeout(_LAG_TIMEOUT_S):
                    await self._client.end_offsets([TopicPartition(self._topic, 0)])
        except (CollectorError, TimeoutError) as exc:
            self._broker.outage.failed(exc)
            return False
        self._broker.succeeded()
        return True

    async def _regulate(self) -> None:
        """Pause every partition while the stage's backpressure says so."""
        if self._backpressure is None:
            return
        paused = await self._backpressure(self._paused)
        assigned = self._client.assignment()
        if self._paused and not paused and (idle := [p for p in assigned if p not in self._tasks]):
            self._client.resume(*idle)
        self._paused = paused
        if paused and assigned:
            self._client.pause(*assigned)  # again after a rebalance, which resets pauses

    async def hand_over(self, revoked: set[TopicPartition]) -> None:
        """Finish (or abandon) the revoked partitions' batches and commit their offsets."""
        tasks = [task for partition, task in self._tasks.items() if partition in revoked]
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=HANDOVER_S)
            for task in late:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        await self._commit(self._tracker.committable(revoked))
        self._tracker.forget(revoked)
        for partition in revoked:  # another member reports it now
            with contextlib.suppress(KeyError):
                metrics.CONSUMER_LAG.remove(self._topic, str(partition.partition))
        if revoked:
            log.info("partitions_revoked", partitions=sorted(p.partition for p in revoked))

    def joined(self, assigned: set[TopicPartition]) -> None:
        self._joined = True
        self._active_at = asyncio.get_running_loop().time()
        log.info("partitions_assigned", partitions=sorted(p.partition for p in assigned))

    async def _shut_down(self) -> None:
        """Let batches in flight finish, commit, leave the group."""
        await self.hand_over(set(self._tasks))
        await self._commit(self._tracker.committable())
        await close_quietly(self._client.stop(), "consumer")
        self._client = None


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]  # untyped library base
    def __init__(self, consumer: PartitionedConsumer) -> None:
        self._consumer = consumer

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._consumer.hand_over(set(revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self._consumer.joined(set(assigned))


# -- which offset each partition may commit ---------------------------------------

#: A partition handle (aiokafka's TopicPartition in the consumer).
P = TypeVar("P")


@dataclass
class _Partition:
    outstanding: set[int] = field(default_factory=set)
    #: One past the highest offset handed out.
    next_offset: int | None = None
    committed: int | None = None

    @property
    def position(self) -> int | None:
        return min(self.outstanding) if self.outstanding else self.next_offset


class OffsetTracker(Generic[P]):
    """Which offset each partition may commit: the lowest one not yet completed.

    A record is completed once its stage is done with it (the intake: its work is
    durable in PostgreSQL, or its dead letter acknowledged). Committing past a record
    that is still in flight would lose it in a crash, so a partition's commit position
    never passes its oldest outstanding record, whatever finished after it.
    """

    def __init__(self) -> None:
        self._partitions: dict[P, _Partition] = {}

    def __contains__(self, partition: object) -> bool:
        """Whether records of ``partition`` were fetched since it was last forgotten."""
        return partition in self._partitions

    def fetched(self, partition: P, offsets: Iterable[int]) -> None:
        """Records at ``offsets`` were handed to the stage."""
        state = self._partitions.setdefault(partition, _Partition())
        for offset in offsets:
            state.outstanding.add(offset)
            if state.next_offset is None or offset >= state.next_offset:
                state.next_offset = offset + 1

    def completed(self, partition: P, offsets: Iterable[int]) -> None:
        """Records at ``offsets`` are done."""
        state = self._partitions.get(partition)
        if state is not None:
            state.outstanding.difference_update(offsets)

    def committable(self, partitions: Iterable[P] | None = None) -> dict[P, int]:
        """Commit positions that moved since the last ``committed`` (all, or of ``partitions``)."""
        chosen = self._partitions if partitions is None else set(partitions)
        positions = {}
        for partition in chosen:
            state = self._partitions.get(partition)
            if state is None:
                continue
            position = state.position
            if position is not None and position != state.committed:
                positions[partition] = position
        return positions

    def committed_at(self, partition: P) -> int | None:
        """The position last committed for ``partition`` (or first read), if any."""
        state = self._partitions.get(partition)
        return None if state is None else state.committed

    def committed(self, positions: dict[P, int]) -> None:
        for partition, position in positions.items():
            if (state := self._partitions.get(partition)) is not None:
                state.committed = position

    def forget(self, partitions: Iterable[P]) -> None:
        """The partitions went to another consumer: what they had is theirs now."""
        for partition in partitions:
            self._partitions.pop(partition, None)
