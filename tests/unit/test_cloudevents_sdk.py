"""The CloudEvents Python SDK and us: what it writes to Kafka decodes as our requests,
and what we write to Kafka (removals, dead letters) it reads back attribute for attribute.

Both of its APIs are checked: `cloudevents.v1` (the 1.x API, kept in 2.x) and
`cloudevents.core` (the 2.x one).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Protocol

import pytest
from cloudevents.core.bindings import kafka as core_kafka
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent as CoreEvent
from cloudevents.v1 import kafka as v1_kafka
from cloudevents.v1.http import CloudEvent as V1Event

from events import (
    CloudEvent,
    DecodeError,
    LegacyTagExpired,
    Removal,
    RepoDeleted,
    RepoSweep,
    Request,
    RequestData,
    TagExpired,
    decode_request,
    rejection_event,
    removal_event,
    to_record,
)
from tests.unit.test_events import ALL_REMOVALS

REPO: dict[str, Any] = {"namespace": "acme", "repository": "web/app", "repository_id": 7}
REQUESTS: list[RequestData] = [
    TagExpired(**REPO, tag="latest", tag_id=11, lifetime_end_ms=1_700_000_000_000),
    LegacyTagExpired(**REPO, tag="v1", repository_tag_id=12, lifetime_end_ts=1_700_000_000),
    RepoDeleted(**REPO),
    RepoSweep(**REPO),
]
TIME = datetime(2025, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)
CAUSE = "request-1"


def type_name(item: object) -> str:
    return type(item).__name__


class SdkMessage(Protocol):
    """A Kafka message as either SDK API gives it."""

    @property
    def headers(self) -> Mapping[str, bytes]: ...
    @property
    def key(self) -> str | bytes | None: ...
    @property
    def value(self) -> str | bytes: ...


def _bytes(text: str | bytes) -> bytes:
    return text.encode() if isinstance(text, str) else text


def decode(message: SdkMessage) -> Request:
    """Our decoder's reading of the record the SDK's producer would send."""
    return decode_request(
        key=None if message.key is None else _bytes(message.key),
        value=_bytes(message.value),
        headers=list(message.headers.items()),
    )


def v1_event(data: RequestData) -> V1Event:
    attributes = {
        "type": data.event_type,
        "source": "/registry",
        "id": CAUSE,
        "time": TIME.isoformat(),
        "datacontenttype": "application/json",
        # The SDK's documented way to choose the Kafka key.
        "partitionkey": data.repository_path,
    }
    return V1Event(attributes, data.model_dump(mode="json"))


def core_event(data: RequestData) -> CoreEvent:
    attributes = {
        "specversion": "1.0",
        "type": data.event_type,
        "source": "/registry",
        "id": CAUSE,
        "time": TIME,
        "datacontenttype": "application/json",
        "partitionkey": data.repository_path,
    }
    return CoreEvent(attributes, data.model_dump(mode="json"))


Encoder = Callable[[RequestData], SdkMessage]
ENCODERS: dict[str, Encoder] = {
    "v1-structured": lambda data: v1_kafka.to_structured(v1_event(data)),
    "v1-binary": lambda data: v1_kafka.to_binary(v1_event(data)),
    "core-structured": lambda data: core_kafka.to_structured(core_event(data), JSONFormat()),
    "core-binary": lambda data: core_kafka.to_binary(core_event(data), JSONFormat()),
}


@pytest.mark.parametrize("encoder", ENCODERS.values(), ids=ENCODERS.keys())
@pytest.mark.parametrize("data", REQUESTS, ids=type_name)
def test_sdk_request_decodes(data: RequestData, encoder: Encoder) -> None:
    """A request of each type, written by the SDK in each content mode, decodes into
    the same type, id, source, time and data, keyed by its repository."""
    request = decode(encoder(data))
    assert type(request.data) is type(data)
    assert request.data == data
    event = request.event
    assert (event.type, event.id, event.source, event.time) == (
        data.event_type,
        CAUSE,
        "/registry",
        TIME,
    )
    assert event.datacontenttype == "application/json"
    assert request.key == "acme/web/app"


def test_v1_structured_mode_moves_datacontenttype_to_the_header() -> None:
    """What the decoder adapts to: the v1 API's structured mode names the data's media
    type in the content-type header and leaves it out of the envelope."""
    message = v1_kafka.to_structured(v1_event(RepoSweep(**REPO)))
    assert message.headers == {"content-type": b"application/json"}
    assert "datacontenttype" not in json.loads(message.value)


@pytest.mark.parametrize(
    ("value", "reason", "detail"),
    [
        (json.dumps(REPO).encode(), "invalid-envelope", "ce_specversion"),
        (b"namespace=acme", "malformed-json", "not JSON"),
    ],
    ids=["data without specversion", "not json"],
)
def test_application_json_without_an_event_is_refused(
    value: bytes, reason: str, detail: str
) -> None:
    """Under content-type application/json and without ce_ headers, a value that is not
    a CloudEvent is still refused: no envelope, or no JSON at all."""
    headers: list[tuple[str, bytes | None]] = [("content-type", b"application/json")]
    with pytest.raises(DecodeError) as caught:
        decode_request(key=b"acme/web/app", value=value, headers=headers)
    assert caught.value.reason == reason
    assert detail in caught.value.detail


Parsed = tuple[dict[str, Any], Any]
Parser = Callable[[bytes, Mapping[str, bytes]], Parsed]


def parsed_by_v1(value: bytes, headers: Mapping[str, bytes]) -> Parsed:
    """The v1 API reads every attribute as the string it was; `time` is parsed here. It
    also takes the content-type header for `datacontenttype`, even in structured mode,
    so that attribute is not compared."""
    event = v1_kafka.from_structured(v1_kafka.KafkaMessage(dict(headers), None, value))
    attributes = dict(event.get_attributes())
    attributes["time"] = datetime.fromisoformat(attributes["time"])
    return attributes, event.get_data()


def parsed_by_core(value: bytes, headers: Mapping[str, bytes]) -> Parsed:
    message = core_kafka.KafkaMessage(headers=dict(headers), key=None, value=value)
    event = core_kafka.from_structured(message, JSONFormat())
    return event.get_attributes(), event.get_data()


PARSERS = {"v1": parsed_by_v1, "core": parsed_by_core}


def assert_sdk_reads(event: CloudEvent, parse: Parser) -> None:
    """The record we would publish for ``event``, read by the SDK, gives its attributes back."""
    value, headers = to_record(event)
    attributes, data = parse(value, dict(headers))
    names = ("specversion", "id", "type", "source", "time", "subject", "causationid")
    assert {name: attributes.get(name) for name in names} == {
        "specversion": "1.0",
        "id": event.id,
        "type": event.type,
        "source": event.source,
        "time": event.time,
        "subject": event.subject,
        "causationid": CAUSE,
    }
    assert data == event.data


@pytest.mark.parametrize("parse", PARSERS.values(), ids=PARSERS.keys())
@pytest.mark.parametrize("removal", ALL_REMOVALS, ids=type_name)
def test_sdk_reads_removal_events(removal: Removal, parse: Parser) -> None:
    """A removal event as the outbox relay publishes it (structured mode) parses with
    the SDK's from_structured into the same attributes, causationid and data."""
    assert_sdk_reads(removal_event(removal, causation_id=CAUSE, time=TIME), parse)


@pytest.mark.parametrize("parse", PARSERS.values(), ids=PARSERS.keys())
def test_sdk_reads_dead_letters(parse: Parser) -> None:
    """A dead letter as the intake publishes it parses with the SDK's from_structured into
    the same attributes, causationid and data, the refused bytes included."""
    letter = rejection_event(
        reason="invalid-field",
        detail="data.tag: Field required",
        topic="registry.gc.requests",
        partition=2,
        offset=41,
        key=b"acme/web/app",
        value=b"\xff\xfe not utf-8",
        causation_id=CAUSE,
        time=TIME,
    )
    assert_sdk_reads(letter, parse)
