"""The audit replay against the real Kafka: removals linked to their requests, filtered,
summarised, and the same bytes every time."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from collector.config import Settings
from collector.errors import ConfigError
from collector.sinks.audit import Query, audit, build_report, json_lines, parse_since, text_lines
from collector.sinks.replay import Record
from events import (
    BlobRemoved,
    CloudEvent,
    LabelRemoved,
    LegacyManifestRemoved,
    LegacyTagExpired,
    LegacyTagRemoved,
    ManifestRemoved,
    RepoDeleted,
    RepoPurged,
    RepoSweep,
    TagRemoved,
    command_causation_id,
    removal_event,
    request_event,
    to_record,
)
from tests.integration.test_kafka import WAIT_S, bootstrap
from tests.pipeline import pipeline_settings
from tests.pipeline import topics as own_topics

T = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
OLD = datetime(2020, 1, 1, tzinfo=UTC)
MANIFEST = "sha256:" + "a1" * 32
OLD_MANIFEST = "sha256:" + "a2" * 32
BLOB = "sha256:" + "b1" * 32
OTHER_BLOB = "sha256:" + "b2" * 32
MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"


def at(seconds: int) -> datetime:
    return T + timedelta(seconds=seconds)


@dataclass
class Topics:
    settings: Settings
    old_sweep: CloudEvent
    sweep: CloudEvent
    purge: CloudEvent
    tag: CloudEvent
    manifest: CloudEvent
    blob: CloudEvent
    purged: CloudEvent
    label: CloudEvent
    uncaused: CloudEvent
    old_tag: CloudEvent
    late_old: CloudEvent


async def produce(
    topic: str, records: Iterable[tuple[bytes, CloudEvent | bytes, datetime | None]]
) -> None:
    """(key, event or raw value, record timestamp or now), acknowledged in order."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap(), acks="all")
    await asyncio.wait_for(producer.start(), WAIT_S)
    try:
        for key, record, timestamp in records:
            value, headers = (record, []) if isinstance(record, bytes) else to_record(record)
            await asyncio.wait_for(
                producer.send_and_wait(
                    topic,
                    value,
                    key=key,
                    headers=headers,
                    timestamp_ms=None if timestamp is None else int(timestamp.timestamp() * 1000),
                ),
                WAIT_S,
            )
    finally:
        await producer.stop()


@pytest.fixture(scope="module")
async def topics() -> AsyncIterator[Topics]:
    """Requests and removals topics of this module's own, read by every test (never written
    after setup). Produced in an order that is not time order, with duplicates, an unknown
    cause, a removal without causationid, junk, a non-removal event and old records."""
    async with own_topics(pipeline_settings(topic_partitions=2)) as settings:
        yield await _produced(settings)


async def _produced(settings: Settings) -> Topics:
    """The records every test reads, on the settings' topics."""
    web: dict[str, Any] = {"namespace": "acme", "repository": "web", "repository_id": 1}
    gone: dict[str, Any] = {"namespace": "acme", "repository": "gone", "repository_id": 2}
    old: dict[str, Any] = {"namespace": "acme", "repository": "old", "repository_id": 3}
    sweep = request_event(RepoSweep(**web), source="/test", time=at(0))
    purge = request_event(RepoDeleted(**gone), source="/test", time=at(0))
    old_sweep = request_event(RepoSweep(**old), source="/test", time=OLD)
    tag = removal_event(
        TagRemoved(**web, tag="v1", tag_id=1, manifest_digest=MANIFEST),
        causation_id=sweep.id,
        time=at(2),
    )
    manifest = removal_event(
        ManifestRemoved(**web, manifest_id=1, digest=MANIFEST, media_type=MEDIA_TYPE),
        causation_id=sweep.id,
        time=at(1),
    )
    blob = removal_event(
        BlobRemoved(blob_id=1, digest=BLOB, size=10, locations=["s3"]),
        causation_id=sweep.id,
        time=at(3),
    )
    purged = removal_event(RepoPurged(**gone), causation_id=purge.id, time=at(4))
    label = removal_event(LabelRemoved(label_id=7, key="k"), causation_id="lost-1234", time=at(5))
    with_cause = removal_event(
        BlobRemoved(blob_id=2, digest=OTHER_BLOB, size=10, locations=["s3"]),
        causation_id="x",
        time=at(5),
    ).model_dump(mode="json")
    del with_cause["causationid"]
    uncaused = CloudEvent.model_validate(with_cause)
    old_tag = removal_event(
        TagRemoved(**old, tag="v0", tag_id=2, manifest_digest=OLD_MANIFEST),
        causation_id=old_sweep.id,
        time=OLD,
    )
    late_old = removal_event(
        ManifestRemoved(**old, manifest_id=2, digest=OLD_MANIFEST, media_type=MEDIA_TYPE),
        causation_id=old_sweep.id,
        time=OLD,
    )
    await produce(
        settings.topic_requests,
        [(b"acme/old", old_sweep, OLD), (b"acme/web", sweep, None), (b"acme/gone", purge, None)],
    )
    await produce(
        settings.topic_removals,
        [
            (b"acme/old", old_tag, OLD),
            (b"junk", b"old junk", OLD),
            (b"acme/web", tag, None),
            (b"acme/web", manifest, None),
            (BLOB.encode(), blob, None),
            (b"acme/gone", purged, None),
            (b"acme/web", tag, None),
            (b"acme/gone", purged, None),
            (b"acme/gone", purged, None),
            (b"label/7", label, None),
            (OTHER_BLOB.encode(), uncaused, None),
            (b"junk", b"not json", None),
            (b"acme/web", sweep, None),  # a request where removals belong: not a removal
            (b"acme/old", late_old, None),  # relayed long after the deletion
        ],
    )
    return Topics(
        settings,
        old_sweep,
        sweep,
        purge,
        tag,
        manifest,
        blob,
        purged,
        label,
        uncaused,
        old_tag,
        late_old,
    )


async def test_each_removal_is_linked_to_its_request_in_time_order(topics: Topics) -> None:
    """One line per distinct removal, sorted by event time then id, naming the request type
    and id that caused it, or unknown."""
    report = await asyncio.wait_for(audit(topics.settings, Query()), WAIT_S)
    old, sweep, purge = topics.old_sweep.id, topics.sweep.id, topics.purge.id
    line = {
        topics.old_tag.id: f"2020-01-01T00:00:00Z tag-removed acme/old:v0 cause: repo-sweep {old}",
        topics.late_old.id: f"2020-01-01T00:00:00Z manifest-removed acme/old@{OLD_MANIFEST}"
        f" cause: repo-sweep {old}",
        topics.label.id: "2026-03-01T12:00:05Z label-removed label/7 cause: unknown",
        topics.uncaused.id: f"2026-03-01T12:00:05Z blob-removed {OTHER_BLOB} cause: unknown",
    }
    expected = [
        *(line[i] for i in sorted([topics.old_tag.id, topics.late_old.id])),
        f"2026-03-01T12:00:01Z manifest-removed acme/web@{MANIFEST} cause: repo-sweep {sweep}",
        f"2026-03-01T12:00:02Z tag-removed acme/web:v1 cause: repo-sweep {sweep}",
        f"2026-03-01T12:00:03Z blob-removed {BLOB} cause: repo-sweep {sweep}",
        f"2026-03-01T12:00:04Z repo-purged acme/gone cause: repo-deleted {purge}",
        *(line[i] for i in sorted([topics.label.id, topics.uncaused.id])),
    ]

    assert list(text_lines(report))[:8] == expected


async def test_the_summary_counts_types_duplicates_unknown_causes_and_bad_records(
    topics: Topics,
) -> None:
    """Counts by type; every extra copy of an id; removals whose causationid is missing or
    not on the requests topic; records that are not CloudEvents; events that are not
    removals."""
    report = await asyncio.wait_for(audit(topics.settings, Query()), WAIT_S)
    *_, summary = json_lines(report)

    assert json.loads(summary) == {
        "summary": {
            "removals": 8,
            "by_type": {
                "registry.gc.blob-removed": 2,
                "registry.gc.label-removed": 1,
                "registry.gc.manifest-removed": 2,
                "registry.gc.repo-purged": 1,
                "registry.gc.tag-removed": 2,
            },
            "duplicates": {"count": 3, "ids": sorted([topics.tag.id, topics.purged.id])},
            "unknown_cause": {
                "count": 2,
                "causation_ids": {"lost-1234": 1},
                "without_causationid": 1,
            },
            "other_events": 1,
            "invalid_records": 2,
        }
    }
    assert list(text_lines(report))[-5:] == [
        "removals: 8 (blob-removed 2, label-removed 1, manifest-removed 2, repo-purged 1,"
        " tag-removed 2)",
        f"duplicates: 3 ({', '.join(sorted([topics.tag.id, topics.purged.id]))})",
        "unknown cause: 2 (lost-1234 (1), no causationid (1))",
        "other events: 1",
        "invalid records: 2",
    ]


async def test_json_lines_carry_the_event_and_its_cause(topics: Topics) -> None:
    """Each removal object has id, time, type, subject, data, causationid and the cause
    (type, id, repository, time), or null."""
    report = await asyncio.wait_for(audit(topics.settings, Query()), WAIT_S)
    objects = [json.loads(line) for line in json_lines(report)][:-1]
    by_id = {entry["id"]: entry for entry in objects}

    assert by_id[topics.manifest.id] == {
        "id": topics.manifest.id,
        "time": "2026-03-01T12:00:01Z",
        "type": "registry.gc.manifest-removed",
        "subject": f"acme/web@{MANIFEST}",
        "data": topics.manifest.data,
        "causationid": topics.sweep.id,
        "cause": {
            "type": "registry.gc.repo-sweep",
            "id": topics.sweep.id,
            "repository": "acme/web",
            "time": "2026-03-01T12:00:00Z",
        },
    }
    assert by_id[topics.label.id]["cause"] is None
    assert by_id[topics.uncaused.id]["causationid"] is None


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        (Query(repositories=frozenset({"acme/gone"})), ["purged"]),
        (Query(repositories=frozenset({"acme/web", "acme/gone"})), ["manifest", "tag", "purged"]),
        (Query(digests=frozenset({BLOB})), ["blob"]),
        (Query(digests=frozenset({MANIFEST})), ["manifest", "tag"]),
        (
            Query(repositories=frozenset({"acme/web"}), digests=frozenset({MANIFEST, BLOB})),
            ["manifest", "tag"],
        ),
        (Query(repositories=frozenset({"nobody/none"})), []),
    ],
)
async def test_filters_by_repository_and_digest(
    topics: Topics, query: Query, expected: list[str]
) -> None:
    """--repository keeps removals in the repositories named; --digest keeps blob and
    manifest removals of the digests and tag removals on them; both must match."""
    report = await asyncio.wait_for(audit(topics.settings, query), WAIT_S)

    assert [entry.event.id for entry in report.entries] == [
        getattr(topics, name).id for name in expected
    ]


async def test_since_skips_what_is_older(topics: Topics) -> None:
    """--since starts each partition at the first record produced from then on (the old
    junk is not even read) and drops removals whose own time is older (relayed late)."""
    report = await asyncio.wait_for(
        audit(topics.settings, Query(since=parse_since("2024-01-01"))), WAIT_S
    )

    assert [entry.event.time for entry in report.entries] == sorted(
        entry.event.time for entry in report.entries
    )
    assert len(report.entries) == 6
    assert all(entry.event.time >= T for entry in report.entries)
    assert report.invalid == 1


async def test_two_replays_print_the_same_bytes(topics: Topics) -> None:
    """Replaying the same topics twice gives byte-identical text and JSON reports."""
    first, second = await asyncio.gather(
        audit(topics.settings, Query()), audit(topics.settings, Query())
    )

    assert list(text_lines(first)) == list(text_lines(second))
    assert list(json_lines(first)) == list(json_lines(second))


async def test_a_missing_topic_is_a_configuration_error(topics: Topics) -> None:
    """An audit of a topic the broker does not have says so instead of reporting nothing."""
    settings = topics.settings.model_copy(update={"topic_removals": f"test.none.{uuid.uuid4()}"})
    with pytest.raises(ConfigError, match=r"no topic test\.none"):
        await asyncio.wait_for(audit(settings, Query()), WAIT_S)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2025-01-31", datetime(2025, 1, 31, tzinfo=UTC)),
        ("2025-01-31T12:30:00Z", datetime(2025, 1, 31, 12, 30, tzinfo=UTC)),
        ("2025-01-31t12:30:00.5z", datetime(2025, 1, 31, 12, 30, 0, 500_000, tzinfo=UTC)),
        ("2025-01-31T14:30:00+02:00", datetime(2025, 1, 31, 12, 30, tzinfo=UTC)),
    ],
)
def test_since_takes_an_rfc_3339_time_or_a_date(text: str, expected: datetime) -> None:
    """A date means midnight UTC; a time keeps its offset."""
    assert parse_since(text) == expected


@pytest.mark.parametrize(
    "text",
    ["yesterday", "2025-13-01", "2025-01-31T12:30:00", "20250131", "1700000000", "2025-1-3", ""],
)
def test_a_bad_since_is_a_usage_error(text: str) -> None:
    """Anything but an RFC 3339 time with its offset, or a date, is refused with one line."""
    with pytest.raises(ConfigError, match="invalid --since") as raised:
        parse_since(text)
    assert "\n" not in str(raised.value)


def test_a_repository_filter_must_name_namespace_and_repository() -> None:
    """--repository web (no namespace) is a usage error."""
    with pytest.raises(ConfigError, match="NAMESPACE/REPOSITORY"):
        Query.parse(None, ["web"], [])


async def test_pre_oci_removals_are_reported_with_their_request() -> None:
    """legacy-tag-removed and legacy-manifest-removed are audited like any removal: linked
    to the legacy-tag-expired request that caused them, and the tag manifest's digest
    matches --digest."""
    async with own_topics(pipeline_settings()) as settings:
        web: dict[str, Any] = {"namespace": "acme", "repository": "web", "repository_id": 1}
        expiry = request_event(
            LegacyTagExpired(**web, tag="v1", repository_tag_id=5, lifetime_end_ts=1),
            source="/test",
            time=at(0),
        )
        tag = removal_event(
            LegacyTagRemoved(**web, tag="v1", repository_tag_id=5, docker_image_id="cafe"),
            causation_id=expiry.id,
            time=at(1),
        )
        manifest = removal_event(
            LegacyManifestRemoved(**web, tag_manifest_id=6, digest=MANIFEST),
            causation_id=expiry.id,
            time=at(1),
        )
        await produce(settings.topic_requests, [(b"acme/web", expiry, None)])
        await produce(
            settings.topic_removals, [(b"acme/web", tag, None), (b"acme/web", manifest, None)]
        )

        report = await asyncio.wait_for(audit(settings, Query()), WAIT_S)
        by_digest = await asyncio.wait_for(
            audit(settings, Query(digests=frozenset({MANIFEST}))), WAIT_S
        )

    cause = f"cause: legacy-tag-expired {expiry.id}"
    assert sorted(text_lines(report))[:2] == sorted(
        [
            f"2026-03-01T12:00:01Z legacy-tag-removed acme/web:v1 {cause}",
            f"2026-03-01T12:00:01Z legacy-manifest-removed acme/web@{MANIFEST} {cause}",
        ]
    )
    assert [entry.event.id for entry in by_digest.entries] == [manifest.id]


def test_removals_of_the_collectors_own_commands_name_the_command() -> None:
    """`collector collect` and `collector scan --orphans` answer no request; their
    removals name the command and its run, not an unknown cause."""
    label = LabelRemoved(label_id=7, key="k")
    collect_id, scan_id = command_causation_id("collect"), command_causation_id("scan")
    events = [
        removal_event(label, causation_id=cause, time=at(n))
        for n, cause in enumerate([collect_id, scan_id, "lost-1"], start=1)
    ]
    records = [Record(0, n, b"label/7", to_record(e)[0], ()) for n, e in enumerate(events)]

    report = build_report(records, [], Query())

    lines = list(text_lines(report))
    assert lines[:3] == [
        f"2026-03-01T12:00:01Z label-removed label/7 cause: collector collect {collect_id}",
        f"2026-03-01T12:00:02Z label-removed label/7 cause: collector scan {scan_id}",
        "2026-03-01T12:00:03Z label-removed label/7 cause: unknown",
    ]
    assert "unknown cause: 1 (lost-1 (1))" in lines
    first = json.loads(next(json_lines(report)))
    assert first["cause"] == {
        "type": "collector collect",
        "id": collect_id,
        "repository": None,
        "time": None,
    }
