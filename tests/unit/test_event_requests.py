"""The request models (CONTRACT §2.1) and the helpers that put requests on Kafka."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from events import (
    CONTENT_TYPE,
    REQUEST_TYPES,
    CloudEvent,
    LegacyTagExpired,
    RepoDeleted,
    RepoSweep,
    RequestData,
    TagExpired,
    request_event,
    to_record,
)

REPO: dict[str, Any] = {"namespace": "acme", "repository": "web/app", "repository_id": 7}
TAG_EXPIRED = TagExpired(**REPO, tag="latest", tag_id=11, lifetime_end_ms=1_700_000_000_000)
REPO_DELETED = RepoDeleted(**REPO)
REPO_SWEEP = RepoSweep(**REPO)
LEGACY_TAG_EXPIRED = LegacyTagExpired(
    **REPO, tag="v1", repository_tag_id=12, lifetime_end_ts=1_700_000_000
)
ALL_REQUESTS: list[RequestData] = [TAG_EXPIRED, LEGACY_TAG_EXPIRED, REPO_DELETED, REPO_SWEEP]
INT_FIELDS = [("repository_id", m) for m in ALL_REQUESTS] + [
    ("tag_id", TAG_EXPIRED),
    ("lifetime_end_ms", TAG_EXPIRED),
    ("repository_tag_id", LEGACY_TAG_EXPIRED),
    ("lifetime_end_ts", LEGACY_TAG_EXPIRED),
]
STR_FIELDS = (
    [("namespace", m) for m in ALL_REQUESTS]
    + [("repository", m) for m in ALL_REQUESTS]
    + [("tag", TAG_EXPIRED), ("tag", LEGACY_TAG_EXPIRED)]
)


def request_id(value: object) -> str:
    return type(value).__name__ if isinstance(value, RequestData) else str(value)


def test_request_types_maps_every_type_to_its_class() -> None:
    """REQUEST_TYPES maps exactly the four request types of CONTRACT §2.1 to their classes."""
    assert {
        "registry.gc.tag-expired": TagExpired,
        "registry.gc.legacy-tag-expired": LegacyTagExpired,
        "registry.gc.repo-deleted": RepoDeleted,
        "registry.gc.repo-sweep": RepoSweep,
    } == REQUEST_TYPES


@pytest.mark.parametrize(
    ("model", "fields"),
    [
        (
            TagExpired,
            {"namespace", "repository", "repository_id", "tag", "tag_id", "lifetime_end_ms"},
        ),
        (
            LegacyTagExpired,
            {
                "namespace",
                "repository",
                "repository_id",
                "tag",
                "repository_tag_id",
                "lifetime_end_ts",
            },
        ),
        (RepoDeleted, {"namespace", "repository", "repository_id"}),
        (RepoSweep, {"namespace", "repository", "repository_id"}),
    ],
    ids=lambda value: value.__name__ if isinstance(value, type) else "",
)
def test_request_has_exactly_the_contract_fields(
    model: type[RequestData], fields: set[str]
) -> None:
    """Each request model has exactly the data fields CONTRACT §2.1 lists, all required."""
    assert set(model.model_fields) == fields
    assert all(field.is_required() for field in model.model_fields.values())


@pytest.mark.parametrize("request_data", ALL_REQUESTS, ids=request_id)
def test_repository_path(request_data: RequestData) -> None:
    """repository_path is `<namespace>/<repository>`, the key the record must carry."""
    assert request_data.repository_path == "acme/web/app"


@pytest.mark.parametrize("request_data", ALL_REQUESTS, ids=request_id)
def test_request_round_trips_through_json(request_data: RequestData) -> None:
    """A request's JSON, validated by the class REQUEST_TYPES names, is the same request."""
    cls = REQUEST_TYPES[request_data.event_type]
    assert cls.model_validate(json.loads(request_data.model_dump_json())) == request_data


@pytest.mark.parametrize(("field", "request_data"), INT_FIELDS, ids=request_id)
@pytest.mark.parametrize("bad", ["12", True, 12.0, None], ids=repr)
def test_int_field_is_strict(field: str, request_data: RequestData, bad: object) -> None:
    """An int field refuses a numeric string, a bool, a float and null: nothing is coerced."""
    data = {**request_data.model_dump(), field: bad}
    with pytest.raises(ValidationError, match=field):
        type(request_data).model_validate(data)


@pytest.mark.parametrize(("field", "request_data"), INT_FIELDS, ids=request_id)
@pytest.mark.parametrize("bad", [2**63, -(2**63) - 1], ids=["above", "below"])
def test_int_field_is_a_bigint(field: str, request_data: RequestData, bad: int) -> None:
    """An int field refuses what PostgreSQL's bigint cannot hold."""
    data = {**request_data.model_dump(), field: bad}
    with pytest.raises(ValidationError, match=field):
        type(request_data).model_validate(data)


@pytest.mark.parametrize(("field", "request_data"), INT_FIELDS, ids=request_id)
def test_int_field_accepts_bigint_limits(field: str, request_data: RequestData) -> None:
    """An int field accepts the largest bigint."""
    data = {**request_data.model_dump(), field: 2**63 - 1}
    assert getattr(type(request_data).model_validate(data), field) == 2**63 - 1


@pytest.mark.parametrize(("field", "request_data"), STR_FIELDS, ids=request_id)
@pytest.mark.parametrize("bad", ["", 5, None, b"acme"], ids=repr)
def test_str_field_is_a_non_empty_string(
    field: str, request_data: RequestData, bad: object
) -> None:
    """A string field refuses the empty string, a number, null and bytes."""
    data = {**request_data.model_dump(), field: bad}
    with pytest.raises(ValidationError, match=field):
        type(request_data).model_validate(data)


@pytest.mark.parametrize("request_data", ALL_REQUESTS, ids=request_id)
def test_request_rejects_unknown_field(request_data: RequestData) -> None:
    """A request with a field the contract does not name is rejected."""
    data = {**request_data.model_dump(), "unexpected": 1}
    with pytest.raises(ValidationError, match="unexpected"):
        type(request_data).model_validate(data)


@pytest.mark.parametrize("request_data", ALL_REQUESTS, ids=request_id)
def test_request_requires_every_field(request_data: RequestData) -> None:
    """A request missing any one of its fields is rejected, naming that field."""
    for missing in request_data.model_dump():
        data = request_data.model_dump()
        del data[missing]
        with pytest.raises(ValidationError, match=missing):
            type(request_data).model_validate(data)


@pytest.mark.parametrize("request_data", ALL_REQUESTS, ids=request_id)
def test_request_is_frozen(request_data: RequestData) -> None:
    """Assigning to a field of a request raises a ValidationError."""
    with pytest.raises(ValidationError, match="frozen"):
        request_data.namespace = "other"  # type: ignore[misc]


# request_event and to_record


@pytest.mark.parametrize("request_data", ALL_REQUESTS, ids=request_id)
def test_request_event_envelope(request_data: RequestData) -> None:
    """request_event wraps the request in a CloudEvents 1.0 envelope of its type."""
    event = request_event(request_data, source="/registry")
    assert event.specversion == "1.0"
    assert event.type == request_data.event_type
    assert event.source == "/registry"
    assert event.datacontenttype == "application/json"
    assert event.data == request_data.model_dump(mode="json")
    assert event.model_extra == {}


def test_request_event_id_is_a_fresh_uuid() -> None:
    """Without event_id, each call gets its own UUID as id."""
    first = request_event(REPO_SWEEP, source="/registry")
    second = request_event(REPO_SWEEP, source="/registry")
    assert str(uuid.UUID(first.id)) == first.id
    assert first.id != second.id


def test_request_event_keeps_given_id_and_time() -> None:
    """An explicit event_id and time are used as given."""
    at = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
    event = request_event(REPO_SWEEP, source="/registry", event_id="request-1", time=at)
    assert (event.id, event.time) == ("request-1", at)


def test_request_event_time_defaults_to_now_aware() -> None:
    """Without a time, the request is stamped with the current, timezone-aware time."""
    before = datetime.now(UTC)
    event = request_event(REPO_SWEEP, source="/registry")
    assert before <= event.time <= datetime.now(UTC)


def test_to_record_is_structured_mode() -> None:
    """to_record gives the UTF-8 JSON of the event and the structured-mode content-type."""
    event = request_event(TAG_EXPIRED, source="/registry", event_id="request-1")
    value, headers = to_record(event)
    assert headers == [("content-type", b"application/cloudevents+json; charset=utf-8")]
    assert headers[0][1].decode() == CONTENT_TYPE
    assert json.loads(value.decode("utf-8")) == json.loads(event.to_json())
    assert CloudEvent.model_validate_json(value) == event


def test_to_record_omits_none_and_keeps_non_ascii() -> None:
    """The value has no null attribute, and non-ASCII text is UTF-8, as written."""
    event = request_event(
        TagExpired(**{**REPO, "repository": "café"}, tag="é", tag_id=1, lifetime_end_ms=2),
        source="/registry",
    )
    value, _ = to_record(event)
    document = json.loads(value)
    assert None not in document.values()
    assert "subject" not in document
    assert "café".encode() in value
