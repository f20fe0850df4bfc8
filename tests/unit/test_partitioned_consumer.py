"""PartitionedConsumer, against a fake aiokafka consumer, and its offset tracking: a
partition commits the lowest offset that is not completed yet."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import pytest
from aiokafka import TopicPartition
from prometheus_client import REGISTRY

from collector import partitioned_consumer
from collector.config import Settings
from collector.errors import DatabaseUnavailable, StorageError
from collector.partitioned_consumer import OffsetTracker, PartitionedConsumer

TP = TopicPartition("requests", 0)


@dataclass
class FakeRecord:
    offset: int


class FakeClient:
    """Enough of AIOKafkaConsumer: assigns partition 0, hands out ``batches`` one poll
    at a time, then nothing; records pauses, resumes and commits."""

    def __init__(self, batches: list[dict[TopicPartition, list[FakeRecord]]]) -> None:
        self.batches = batches
        self.listener: Any = None
        self.paused: set[TopicPartition] = set()
        self.commits: list[dict[TopicPartition, int]] = []
        self.committed = asyncio.Event()
        self.end: int | None = None
        self.assigned = {TP}

    def subscribe(self, topics: list[str], listener: Any) -> None:
        self.listener = listener

    async def start(self) -> None:
        await self.listener.on_partitions_assigned({TP})

    async def stop(self) -> None:
        pass

    async def getmany(self, timeout_ms: int, max_records: int) -> dict[Any, Any]:
        await asyncio.sleep(0.01)
        batch = self.batches.pop(0) if self.batches else {}
        for records in batch.values():
            self.end = max(self.end or 0, records[-1].offset + 1)
        return batch

    async def end_offsets(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        """Each partition's end offset: past the last record handed out."""
        return {partition: self.end or 0 for partition in partitions}

    def assignment(self) -> set[TopicPartition]:
        return set(self.assigned)

    def pause(self, *partitions: TopicPartition) -> None:
        self.paused.update(partitions)

    def resume(self, *partitions: TopicPartition) -> None:
        self.paused.difference_update(partitions)

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.commits.append(dict(offsets))
        self.committed.set()


def member(
    monkeypatch: pytest.MonkeyPatch,
    batches: list[dict[TopicPartition, list[FakeRecord]]],
    handle: partitioned_consumer.Handler,
    stopping: asyncio.Event,
) -> tuple[PartitionedConsumer, FakeClient]:
    """A member whose aiokafka consumer is a FakeClient handing out ``batches``."""
    client = FakeClient(batches)
    monkeypatch.setattr(partitioned_consumer, "AIOKafkaConsumer", lambda **_: client)
    consumer = PartitionedConsumer(
        Settings(kafka_bootstrap="127.0.0.1:1"),
        topic=TP.topic,
        group_id="group",
        handle=handle,
        stopping=stopping,
        name="test",
        max_records=10,
    )
    return consumer, client


async def test_a_batch_is_handled_with_its_partition_paused_and_committed_once_done(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The handler gets the partition's records while the partition is paused; the
    partition resumes after, and commits what the handler completed (the position the
    first fetch started from needs no commit)."""
    stopping = asyncio.Event()
    seen: list[tuple[list[int], bool]] = []

    async def handle(partition: TopicPartition, records: list[Any]) -> None:
        seen.append(([r.offset for r in records], partition in client.paused))
        consumer.completed(partition, [r.offset for r in records])

    batches = [{TP: [FakeRecord(3), FakeRecord(4)]}]
    consumer, client = member(monkeypatch, batches, handle, stopping)
    running = asyncio.create_task(consumer.run())
    await asyncio.wait_for(client.committed.wait(), 5)
    stopping.set()
    await running

    assert consumer.in_group
    assert seen == [([3, 4], True)]
    assert client.paused == set()
    assert client.commits == [{TP: 5}]


async def test_a_failed_batch_stops_the_member_with_its_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A batch's error is not swallowed: run() raises it, nothing of it committed."""

    async def handle(partition: TopicPartition, records: list[Any]) -> None:
        raise StorageError("refused")

    consumer, client = member(monkeypatch, [{TP: [FakeRecord(0)]}], handle, asyncio.Event())

    with pytest.raises(StorageError, match="refused"):
        await asyncio.wait_for(consumer.run(), 5)
    assert client.commits == []


async def test_an_outage_met_while_stopping_leaves_the_rest_uncommitted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A batch that gives up on a dependency away because the member stops is no
    failure: what it completed is committed, the rest is left for the next run."""
    stopping = asyncio.Event()

    async def handle(partition: TopicPartition, records: list[Any]) -> None:
        consumer.completed(partition, [records[0].offset])
        stopping.set()
        raise DatabaseUnavailable()

    batches = [{TP: [FakeRecord(0), FakeRecord(1)]}]
    consumer, client = member(monkeypatch, batches, handle, stopping)

    await asyncio.wait_for(consumer.run(), 5)
    assert client.commits == [{TP: 1}]


def test_commit_position_stops_at_the_oldest_outstanding_record() -> None:
    """Records completed out of order never move the commit past an unfinished one."""
    tracker: OffsetTracker[str] = OffsetTracker()
    tracker.fetched("p0", range(10, 15))
    tracker.completed("p0", [11, 12, 14])
    assert tracker.committable() == {"p0": 10}
    tracker.completed("p0", [10])
    assert tracker.committable() == {"p0": 13}
    tracker.completed("p0", [13])
    assert tracker.committable() == {"p0": 15}


def test_only_moved_positions_are_offered_again() -> None:
    """After a commit, a partition is offered again only once its position moved."""
    tracker: OffsetTracker[str] = OffsetTracker()
    tracker.fetched("p0", [0, 1])
    tracker.fetched("p1", [7])
    tracker.completed("p0", [0, 1])
    positions = tracker.committable()
    assert positions == {"p0": 2, "p1": 7}
    tracker.committed(positions)
    assert tracker.committable() == {}
    tracker.completed("p1", [7])
    assert tracker.committable() == {"p1": 8}


def test_gaps_in_offsets_do_not_hold_the_commit_back() -> None:
    """Offsets a compacted or transactional topic skips are no records to wait for."""
    tracker: OffsetTracker[str] = OffsetTracker()
    tracker.fetched("p0", [3, 7, 8])
    tracker.completed("p0", [3, 7, 8])
    assert tracker.committable() == {"p0": 9}


def test_forgotten_partitions_offer_nothing() -> None:
    """A revoked partition is forgotten: nothing to commit for it, even after a late
    completion."""
    tracker: OffsetTracker[str] = OffsetTracker()
    tracker.fetched("p0", [0, 1, 2])
    tracker.fetched("p1", [5])
    tracker.completed("p0", [0])
    assert tracker.committable(["p1"]) == {"p1": 5}
    tracker.forget(["p0"])
    assert tracker.committable() == {"p1": 5}
    tracker.completed("p0", [1])  # a late completion of a forgotten partition is ignored
    assert "p0" not in tracker.committable()


def test_a_partition_is_tracked_from_its_first_fetch_until_forgotten() -> None:
    """The consumer asks whether a fetch is a partition's first (since assigned): that
    one starts at the group's position, which needs no commit."""
    tracker: OffsetTracker[str] = OffsetTracker()
    assert "p0" not in tracker
    tracker.fetched("p0", [4, 5])
    tracker.committed({"p0": 4})
    assert "p0" in tracker
    assert tracker.committable() == {}
    tracker.forget(["p0"])
    assert "p0" not in tracker


async def test_the_lag_is_the_end_of_the_partition_minus_what_was_committed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """registry_gc_consumer_lag counts the records of an assigned partition not
    committed yet, the ones in hand included; a revoked partition's series goes."""
    stopping, release = asyncio.Event(), asyncio.Event()

    async def handle(partition: TopicPartition, records: list[Any]) -> None:
        consumer.completed(partition, [r.offset for r in records[:4]])
        await release.wait()

    batches = [{TP: [FakeRecord(offset) for offset in range(10)]}]
    monkeypatch.setattr(partitioned_consumer, "_LAG_EVERY_S", 0.0)
    consumer, client = member(monkeypatch, batches, handle, stopping)
    running = asyncio.create_task(consumer.run())
    labels = {"topic": TP.topic, "partition": str(TP.partition)}

    def lag() -> float | None:
        return REGISTRY.get_sample_value("registry_gc_consumer_lag", labels)

    await asyncio.wait_for(client.committed.wait(), 5)
    for _ in range(100):
        if lag() == 6:
            break
        await asyncio.sleep(0.01)
    assert lag() == 6  # offsets 4 to 9: fetched, in hand, not committed
    release.set()
    client.assigned = set()  # the group takes the partition away
    await consumer.hand_over({TP})
    assert lag() is None
    stopping.set()
    await running


async def test_a_batch_that_fails_while_the_member_stops_still_fails_the_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The error of a batch still in hand when stopping began is raised by run() (the
    blob deleter's TooManyMissing then exits 1), not dropped with the poll loop."""
    stopping = asyncio.Event()

    async def handle(partition: TopicPartition, records: list[Any]) -> None:
        stopping.set()
        await asyncio.sleep(0.05)  # the poll loop sees the stop first
        raise StorageError("refused while stopping")

    consumer, client = member(monkeypatch, [{TP: [FakeRecord(0)]}], handle, stopping)

    with pytest.raises(StorageError, match="refused while stopping"):
        await asyncio.wait_for(consumer.run(), 5)
    assert client.commits == []
