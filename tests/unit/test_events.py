"""The event models: removal payloads (CONTRACT §2.2) and the CloudEvents envelope (§2)."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from pydantic import ValidationError

from events import (
    COLLECTOR_SOURCE,
    REMOVAL_TYPES,
    SPECVERSION,
    BlobRemoved,
    CloudEvent,
    LabelRemoved,
    LegacyImageRemoved,
    LegacyManifestRemoved,
    LegacyTagRemoved,
    ManifestRemoved,
    Removal,
    RepoPurged,
    RepositoryRemoval,
    TagRemoved,
    removal_event,
)

DIGEST = "sha256:" + "ab" * 32
REPO: dict[str, Any] = {"namespace": "acme", "repository": "web/app", "repository_id": 7}

TAG = TagRemoved(**REPO, tag="latest", tag_id=11, manifest_digest=DIGEST)
MANIFEST = ManifestRemoved(
    **REPO,
    manifest_id=12,
    digest=DIGEST,
    media_type="application/vnd.oci.image.manifest.v1+json",
)
LEGACY_IMAGE = LegacyImageRemoved(**REPO, image_id=13, docker_image_id="deadbeef")
PURGED = RepoPurged(**REPO)
BLOB = BlobRemoved(blob_id=14, digest=DIGEST, size=1024, locations=["local_us", "s3_eu"])
LABEL = LabelRemoved(label_id=15, key="maintainer")
LEGACY_TAG = LegacyTagRemoved(**REPO, tag="v1", repository_tag_id=16, docker_image_id="cafe")
LEGACY_MANIFEST = LegacyManifestRemoved(**REPO, tag_manifest_id=17, digest=DIGEST)

ALL_REMOVALS: list[Removal] = [
    TAG,
    MANIFEST,
    LEGACY_IMAGE,
    PURGED,
    BLOB,
    LABEL,
    LEGACY_TAG,
    LEGACY_MANIFEST,
]
REPOSITORY_REMOVALS: list[RepositoryRemoval] = [
    TAG,
    MANIFEST,
    LEGACY_IMAGE,
    PURGED,
    LEGACY_TAG,
    LEGACY_MANIFEST,
]

#: A valid envelope, as keyword arguments, for the validation tests to spoil one at a time.
ENVELOPE: dict[str, Any] = {
    "specversion": "1.0",
    "id": "f81d4fae-7dec-11d0-a765-00a0c91e6bf6",
    "source": "/registry",
    "type": "registry.gc.repo-sweep",
    "time": datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC),
    "data": {"namespace": "acme", "repository": "web", "repository_id": 1},
}


def removal_id(removal: object) -> str:
    return type(removal).__name__


# Removal payloads


@pytest.mark.parametrize(
    ("removal", "subject"),
    [
        (TAG, "acme/web/app:latest"),
        (MANIFEST, f"acme/web/app@{DIGEST}"),
        (LEGACY_IMAGE, "acme/web/app/deadbeef"),
        (PURGED, "acme/web/app"),
        (BLOB, DIGEST),
        (LABEL, "label/15"),
        (LEGACY_TAG, "acme/web/app:v1"),
        (LEGACY_MANIFEST, f"acme/web/app@{DIGEST}"),
    ],
    ids=removal_id,
)
def test_subject(removal: Removal, subject: str) -> None:
    """Each removal's subject has the form CONTRACT §2.2 pins for its type."""
    assert removal.subject == subject


@pytest.mark.parametrize("removal", REPOSITORY_REMOVALS, ids=removal_id)
def test_repository_removal_keyed_by_repository_path(removal: RepositoryRemoval) -> None:
    """A repository-scoped removal is keyed `namespace/repository`, whatever its subject."""
    assert removal.partition_key == "acme/web/app"
    assert removal.repository_path == "acme/web/app"


def test_blob_removed_keyed_by_digest() -> None:
    """A blob removal is keyed by the blob digest."""
    assert BLOB.partition_key == DIGEST


def test_label_removed_keyed_by_label_id() -> None:
    """A label removal is keyed `label/<id>`."""
    assert LABEL.partition_key == "label/15"


@pytest.mark.parametrize(
    ("removal_type", "event_type"),
    [
        (TagRemoved, "registry.gc.tag-removed"),
        (ManifestRemoved, "registry.gc.manifest-removed"),
        (BlobRemoved, "registry.gc.blob-removed"),
        (LabelRemoved, "registry.gc.label-removed"),
        (LegacyImageRemoved, "registry.gc.legacy-image-removed"),
        (RepoPurged, "registry.gc.repo-purged"),
        (LegacyTagRemoved, "registry.gc.legacy-tag-removed"),
        (LegacyManifestRemoved, "registry.gc.legacy-manifest-removed"),
    ],
    ids=lambda value: value.__name__ if isinstance(value, type) else str(value),
)
def test_event_type(removal_type: type[Removal], event_type: str) -> None:
    """Each removal class carries the CloudEvents type CONTRACT §2.2 names for it."""
    assert removal_type.event_type == event_type


def test_removal_types_maps_every_type_to_its_class() -> None:
    """REMOVAL_TYPES maps exactly the eight removal types to their classes."""
    assert {
        "registry.gc.tag-removed": TagRemoved,
        "registry.gc.manifest-removed": ManifestRemoved,
        "registry.gc.blob-removed": BlobRemoved,
        "registry.gc.label-removed": LabelRemoved,
        "registry.gc.legacy-image-removed": LegacyImageRemoved,
        "registry.gc.repo-purged": RepoPurged,
        "registry.gc.legacy-tag-removed": LegacyTagRemoved,
        "registry.gc.legacy-manifest-removed": LegacyManifestRemoved,
    } == REMOVAL_TYPES


@pytest.mark.parametrize("removal", ALL_REMOVALS, ids=removal_id)
def test_removal_round_trips_through_its_registered_class(removal: Removal) -> None:
    """A removal's JSON dump, validated by the class REMOVAL_TYPES names, is the same removal."""
    cls = REMOVAL_TYPES[removal.event_type]
    assert cls.model_validate(removal.model_dump(mode="json")) == removal


@pytest.mark.parametrize("removal", ALL_REMOVALS, ids=removal_id)
def test_removal_is_frozen(removal: Removal) -> None:
    """Assigning to a field of a removal raises a ValidationError."""
    field = next(iter(type(removal).model_fields))
    with pytest.raises(ValidationError, match="frozen"):
        setattr(removal, field, 0)


@pytest.mark.parametrize("removal", ALL_REMOVALS, ids=removal_id)
def test_removal_rejects_unknown_field(removal: Removal) -> None:
    """A removal payload with a field the contract does not name is rejected."""
    data = {**removal.model_dump(), "unexpected": 1}
    with pytest.raises(ValidationError, match="unexpected"):
        type(removal).model_validate(data)


@pytest.mark.parametrize("removal", ALL_REMOVALS, ids=removal_id)
def test_removal_requires_every_field(removal: Removal) -> None:
    """A removal payload missing one of its fields is rejected."""
    data = removal.model_dump()
    missing = next(iter(data))
    del data[missing]
    with pytest.raises(ValidationError, match=missing):
        type(removal).model_validate(data)


def test_base_removal_has_no_subject() -> None:
    """The base Removal leaves `subject` (and so `partition_key`) to its subclasses."""
    with pytest.raises(NotImplementedError):
        _ = Removal().subject


# The envelope built by removal_event


@pytest.mark.parametrize("removal", ALL_REMOVALS, ids=removal_id)
def test_removal_event_envelope(removal: Removal) -> None:
    """removal_event wraps the removal in a CloudEvents 1.0 envelope of its type and subject."""
    event = removal_event(removal, causation_id="request-1")
    assert event.specversion == SPECVERSION == "1.0"
    assert event.source == COLLECTOR_SOURCE
    assert event.type == removal.event_type
    assert event.subject == removal.subject
    assert event.datacontenttype == "application/json"
    assert event.data == removal.model_dump(mode="json")


def test_removal_event_data_is_json_ready() -> None:
    """The event data holds the removal's fields as JSON values."""
    event = removal_event(BLOB, causation_id="request-1")
    assert event.data == {
        "blob_id": 14,
        "digest": DIGEST,
        "size": 1024,
        "locations": ["local_us", "s3_eu"],
    }


def test_removal_event_id_is_a_fresh_uuid() -> None:
    """Without event_id, each call gets its own UUID as id."""
    first = removal_event(TAG, causation_id="request-1")
    second = removal_event(TAG, causation_id="request-1")
    assert str(uuid.UUID(first.id)) == first.id
    assert str(uuid.UUID(second.id)) == second.id
    assert first.id != second.id


def test_removal_event_keeps_given_id() -> None:
    """An explicit event_id is used as the id."""
    event = removal_event(TAG, causation_id="request-1", event_id="event-42")
    assert event.id == "event-42"


def test_removal_event_refuses_an_empty_id() -> None:
    """An explicit but empty event_id is an error, not a reason to invent one."""
    with pytest.raises(ValidationError):
        removal_event(TAG, causation_id="request-1", event_id="")


def test_removal_event_keeps_given_source_and_time() -> None:
    """An explicit source and time are used as given."""
    at = datetime(2025, 6, 1, 12, 0, tzinfo=timezone(timedelta(hours=2)))
    event = removal_event(TAG, causation_id="request-1", source="/elsewhere", time=at)
    assert event.source == "/elsewhere"
    assert event.time == at


def test_removal_event_time_defaults_to_now_aware() -> None:
    """Without a time, the event is stamped with the current, timezone-aware time."""
    before = datetime.now(UTC)
    event = removal_event(TAG, causation_id="request-1")
    after = datetime.now(UTC)
    assert event.time.tzinfo is not None
    assert event.time.utcoffset() is not None
    assert before <= event.time <= after


def test_removal_event_carries_causation_id() -> None:
    """The causationid extension attribute holds the causing request's id."""
    event = removal_event(TAG, causation_id="request-1")
    assert event.model_extra == {"causationid": "request-1"}


def test_to_json_is_structured_cloudevent() -> None:
    """to_json gives the structured-mode JSON object, causationid and data included."""
    at = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    event = removal_event(LABEL, causation_id="request-1", event_id="event-1", time=at)
    document = json.loads(event.to_json())
    assert document == {
        "specversion": "1.0",
        "id": "event-1",
        "source": COLLECTOR_SOURCE,
        "type": "registry.gc.label-removed",
        "time": document["time"],
        "datacontenttype": "application/json",
        "subject": "label/15",
        "data": {"label_id": 15, "key": "maintainer"},
        "causationid": "request-1",
    }
    assert datetime.fromisoformat(document["time"]) == at


def test_to_json_round_trips() -> None:
    """An event parsed back from to_json equals the original, extension included."""
    event = removal_event(MANIFEST, causation_id="request-1")
    parsed = CloudEvent.model_validate_json(event.to_json())
    assert parsed == event
    assert parsed.model_extra == {"causationid": "request-1"}


def test_to_json_omits_none_fields() -> None:
    """Attributes left at None (here `subject`) are absent from to_json, not null."""
    event = CloudEvent(**ENVELOPE)
    document = json.loads(event.to_json())
    assert "subject" not in document
    assert None not in document.values()


# CloudEvent validation


def test_cloudevent_accepts_valid_envelope() -> None:
    """The valid envelope the rejection tests start from is accepted."""
    event = CloudEvent(**ENVELOPE)
    assert event.id == ENVELOPE["id"]


def test_cloudevent_rejects_naive_time() -> None:
    """A time without a timezone is rejected."""
    with pytest.raises(ValidationError, match="time"):
        CloudEvent(**{**ENVELOPE, "time": datetime(2025, 1, 2, 3, 4, 5)})


def test_cloudevent_rejects_empty_id() -> None:
    """An empty id is rejected."""
    with pytest.raises(ValidationError, match="id"):
        CloudEvent(**{**ENVELOPE, "id": ""})


@pytest.mark.parametrize("specversion", ["0.3", "1", "2.0", ""])
def test_cloudevent_rejects_other_specversion(specversion: str) -> None:
    """Only specversion "1.0" is accepted."""
    with pytest.raises(ValidationError, match="specversion"):
        CloudEvent(**{**ENVELOPE, "specversion": specversion})


@pytest.mark.parametrize("attribute", ["specversion", "id", "source", "type", "time", "data"])
def test_cloudevent_requires_attribute(attribute: str) -> None:
    """Each required CloudEvents attribute must be present."""
    envelope = {key: value for key, value in ENVELOPE.items() if key != attribute}
    with pytest.raises(ValidationError, match=attribute):
        CloudEvent(**envelope)


def test_cloudevent_is_frozen() -> None:
    """An envelope cannot be changed once built (its id is fixed for good)."""
    event = removal_event(TAG, causation_id="request-1")
    with pytest.raises(ValidationError, match="frozen"):
        event.id = "other"  # type: ignore[misc]


def test_events_imports_without_the_collector_or_drivers() -> None:
    """Other teams import `events` alone: it pulls in no collector, asyncpg or aiokafka."""
    import subprocess
    import sys

    probe = (
        "import sys, events; "
        "loaded = {'collector', 'asyncpg', 'aiokafka'} & {m.split('.')[0] for m in sys.modules}; "
        "print(sorted(loaded))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
