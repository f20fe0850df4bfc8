"""OffsetTracker: a partition commits the lowest offset that is not completed yet."""

from __future__ import annotations

from collector.intake.offsets import OffsetTracker


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
