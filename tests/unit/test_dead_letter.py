"""The dead-letter event (CONTRACT §2.3): a refused record, kept byte for byte."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from events import (
    COLLECTOR_SOURCE,
    CloudEvent,
    DecodeError,
    RequestRejected,
    decode_request,
    rejection_event,
    to_record,
)

RECORD: dict[str, Any] = {
    "reason": "malformed-json",
    "detail": "the value is not JSON",
    "topic": "registry.gc.requests",
    "partition": 3,
    "offset": 42,
}


def rejected(key: bytes | None, value: bytes | None) -> RequestRejected:
    """The data of the dead letter for a record with this key and value, read back from Kafka."""
    event = rejection_event(**RECORD, key=key, value=value)
    payload, _ = to_record(event)
    return RequestRejected.model_validate(CloudEvent.model_validate_json(payload).data)


def test_utf8_key_and_value_are_kept_as_text() -> None:
    """A UTF-8 key and value are stored as the text they spell, marked utf-8."""
    data = rejected("acme/café".encode(), b'{"not": json')
    assert (data.key, data.key_encoding) == ("acme/café", "utf-8")
    assert (data.value, data.value_encoding) == ('{"not": json', "utf-8")
    assert data.key_bytes == "acme/café".encode()
    assert data.value_bytes == b'{"not": json'


def test_non_utf8_key_and_value_are_kept_as_base64() -> None:
    """A key or value that is not UTF-8 is stored base64, marked so, and decodes to the bytes."""
    key, value = b"acme/\xff\xfe", bytes(range(256))
    data = rejected(key, value)
    assert (data.key, data.key_encoding) == (base64.b64encode(key).decode(), "base64")
    assert data.value_encoding == "base64"
    assert data.key_bytes == key
    assert data.value_bytes == value


def test_mixed_encodings() -> None:
    """Key and value are encoded independently of each other."""
    data = rejected(b"acme/web", b"\xff")
    assert (data.key_encoding, data.value_encoding) == ("utf-8", "base64")


def test_empty_key_and_value_are_not_null() -> None:
    """Empty bytes stay empty strings, distinct from an absent key or value."""
    data = rejected(b"", b"")
    assert (data.key, data.key_encoding, data.value, data.value_encoding) == (
        "",
        "utf-8",
        "",
        "utf-8",
    )
    assert (data.key_bytes, data.value_bytes) == (b"", b"")


def test_null_key_and_value() -> None:
    """A record without key or value has null there, with a null encoding, in the JSON too."""
    data = rejected(None, None)
    assert (data.key, data.key_encoding, data.value, data.value_encoding) == (None,) * 4
    assert (data.key_bytes, data.value_bytes) == (None, None)
    event = rejection_event(**RECORD, key=None, value=None)
    document = json.loads(to_record(event)[0])
    assert document["data"]["key"] is None
    assert document["data"]["value_encoding"] is None


def test_record_position_and_reason_are_kept() -> None:
    """The dead letter names the reason, detail, topic, partition and offset of the record."""
    data = rejected(b"k", b"v")
    assert data.model_dump(include=set(RECORD)) == RECORD


def test_rejection_event_envelope() -> None:
    """rejection_event: a request-rejected CloudEvent from the collector, with a fresh UUID."""
    first = rejection_event(**RECORD, key=b"k", value=b"v")
    second = rejection_event(**RECORD, key=b"k", value=b"v")
    assert first.type == "registry.gc.request-rejected" == RequestRejected.event_type
    assert first.source == COLLECTOR_SOURCE
    assert first.specversion == "1.0"
    assert str(uuid.UUID(first.id)) == first.id
    assert first.id != second.id
    assert first.model_extra == {}


def test_rejection_event_causation_source_and_time() -> None:
    """A given causation id, source and time are carried as given."""
    at = datetime(2025, 1, 2, tzinfo=UTC)
    event = rejection_event(
        **RECORD, key=b"k", value=b"v", source="/elsewhere", causation_id="request-1", time=at
    )
    assert event.model_extra == {"causationid": "request-1"}
    assert (event.source, event.time) == ("/elsewhere", at)


def test_decode_error_becomes_a_dead_letter() -> None:
    """A DecodeError's reason and detail, with the record, make the dead letter."""
    key, value = b"acme/web", b"\xffnot json"
    with pytest.raises(DecodeError) as caught:
        decode_request(key=key, value=value, headers=[])
    event = rejection_event(
        reason=caught.value.reason,
        detail=caught.value.detail,
        topic="registry.gc.requests",
        partition=0,
        offset=7,
        key=key,
        value=value,
    )
    data = RequestRejected.model_validate(event.data)
    assert (data.reason, data.value_bytes) == ("malformed-json", value)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"key": "k", "key_encoding": None}, "key_encoding"),
        ({"key": None, "key_encoding": "utf-8"}, "key_encoding"),
        ({"value": "v", "value_encoding": None}, "value_encoding"),
        ({"value": "not base64!", "value_encoding": "base64"}, "value is not base64"),
        ({"key": "k", "key_encoding": "latin-1"}, "key_encoding"),
        ({"partition": -1}, "partition"),
        ({"reason": ""}, "reason"),
        ({"extra": 1}, "extra"),
    ],
)
def test_request_rejected_refuses_inconsistent_data(changes: dict[str, Any], message: str) -> None:
    """Data whose key or value disagrees with its encoding, or is otherwise invalid, is refused."""
    valid = {**RECORD, "key": "k", "key_encoding": "utf-8", "value": "v", "value_encoding": "utf-8"}
    RequestRejected.model_validate(valid)
    with pytest.raises(ValidationError, match=message):
        RequestRejected.model_validate({**valid, **changes})
