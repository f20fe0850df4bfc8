"""Which offset each partition may commit: the lowest one not yet completed.

A record is completed once what it asked for is durable in PostgreSQL (or its
dead letter is acknowledged). Committing past a record that is still in
flight would lose it in a crash, so a partition's commit position never
passes its oldest outstanding record, whatever finished after it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

#: A partition handle (aiokafka's TopicPartition in the service).
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
    def __init__(self) -> None:
        self._partitions: dict[P, _Partition] = {}

    def fetched(self, partition: P, offsets: Iterable[int]) -> None:
        """Records at ``offsets`` were handed to the intake."""
        state = self._partitions.setdefault(partition, _Partition())
        for offset in offsets:
            state.outstanding.add(offset)
            if state.next_offset is None or offset >= state.next_offset:
                state.next_offset = offset + 1

    def completed(self, partition: P, offsets: Iterable[int]) -> None:
        """Records at ``offsets`` are done: durable, or dead-lettered."""
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

    def committed(self, positions: dict[P, int]) -> None:
        for partition, position in positions.items():
            if (state := self._partitions.get(partition)) is not None:
                state.committed = position

    def forget(self, partitions: Iterable[P]) -> None:
        """The partitions went to another consumer: what they had is theirs now."""
        for partition in partitions:
            self._partitions.pop(partition, None)
