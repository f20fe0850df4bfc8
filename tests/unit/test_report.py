"""The run report: removals counted by event type, bytes freed, merged across repositories."""

from __future__ import annotations

from collections import Counter

from collector.engine.context import Report
from collector.engine.outcomes import Deferred, Finished
from collector.outbox.store import Removed
from events import BlobRemoved, LabelRemoved, ManifestRemoved, Removal, TagRemoved

DIGEST = "sha256:" + "cd" * 32


def tag(tag_id: int) -> TagRemoved:
    return TagRemoved(
        namespace="acme",
        repository="app",
        repository_id=1,
        tag=f"v{tag_id}",
        tag_id=tag_id,
        manifest_digest=DIGEST,
    )


def manifest(manifest_id: int) -> ManifestRemoved:
    return ManifestRemoved(
        namespace="acme",
        repository="app",
        repository_id=1,
        manifest_id=manifest_id,
        digest=DIGEST,
        media_type="application/vnd.oci.image.manifest.v1+json",
    )


def blob(blob_id: int, size: int) -> BlobRemoved:
    return BlobRemoved(blob_id=blob_id, digest=DIGEST, size=size, locations=["local_us"])


def removed(removal: Removal) -> Removed:
    return Removed(removal=removal, causation_id="request-1")


def report_of(*removals: Removal) -> Report:
    report = Report()
    for removal in removals:
        report.add(removed(removal))
    return report


def test_new_report_is_empty() -> None:
    """A fresh report has removed nothing and freed nothing."""
    report = Report()
    assert report.removed == Counter()
    assert report.bytes_freed == 0
    assert report.repositories == 0
    assert report.incomplete == []
    assert report.outcomes == {}
    assert report.total == 0


def test_add_counts_by_event_type() -> None:
    """add() counts each removal under its CloudEvents type."""
    report = report_of(tag(1), tag(2), manifest(3), LabelRemoved(label_id=4, key="k"))
    assert report.removed == Counter(
        {
            "registry.gc.tag-removed": 2,
            "registry.gc.manifest-removed": 1,
            "registry.gc.label-removed": 1,
        }
    )


def test_add_sums_blob_sizes() -> None:
    """add() adds the size of every removed blob to bytes_freed."""
    report = report_of(blob(1, 100), blob(2, 2048), blob(3, 0))
    assert report.bytes_freed == 2148
    assert report.removed == Counter({"registry.gc.blob-removed": 3})


def test_add_frees_no_bytes_for_other_removals() -> None:
    """Only blob removals free bytes; tags, manifests and labels add none."""
    report = report_of(tag(1), manifest(2), LabelRemoved(label_id=3, key="k"))
    assert report.bytes_freed == 0


def test_add_leaves_repositories_and_incomplete_alone() -> None:
    """add() counts removals only, not repositories or incomplete purges."""
    report = report_of(tag(1), blob(2, 10))
    assert report.repositories == 0
    assert report.incomplete == []


def test_total_counts_every_removal() -> None:
    """total is the number of removals of every type."""
    assert report_of(tag(1), tag(2), manifest(3), blob(4, 5)).total == 4


def test_merge_adds_everything() -> None:
    """merge() adds the other report's counts, bytes, repositories, incomplete purges and
    requests' outcomes."""
    report = report_of(tag(1), blob(2, 100))
    report.repositories = 1
    report.incomplete = [5]
    report.outcomes = {1: Finished.COLLECTED}
    other = report_of(tag(3), manifest(4), blob(5, 50))
    other.repositories = 2
    other.incomplete = [6, 7]
    other.outcomes = {6: Deferred(7, "rows were locked")}

    report.merge(other)

    assert report.removed == Counter(
        {
            "registry.gc.tag-removed": 2,
            "registry.gc.manifest-removed": 1,
            "registry.gc.blob-removed": 2,
        }
    )
    assert report.bytes_freed == 150
    assert report.repositories == 3
    assert report.incomplete == [5, 6, 7]
    assert report.outcomes == {1: Finished.COLLECTED, 6: Deferred(7, "rows were locked")}
    assert report.total == 5


def test_merge_leaves_other_unchanged() -> None:
    """merge() does not change the report merged in."""
    report = report_of(tag(1))
    other = report_of(blob(2, 100))
    other.repositories = 1
    other.incomplete = [9]

    report.merge(other)

    assert other.removed == Counter({"registry.gc.blob-removed": 1})
    assert other.bytes_freed == 100
    assert other.repositories == 1
    assert other.incomplete == [9]


def test_merge_into_empty_report_copies() -> None:
    """Merging into an empty report gives the same figures as the other report."""
    other = report_of(tag(1), blob(2, 30))
    other.repositories = 1
    report = Report()
    report.merge(other)
    assert report == other


def test_reports_do_not_share_state() -> None:
    """Two fresh reports have their own counters and lists."""
    first, second = Report(), Report()
    first.add(removed(tag(1)))
    first.incomplete.append(1)
    assert second.total == 0
    assert second.incomplete == []
