"""decode_request: one record of the requests topic in, a typed request or a reason out."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, get_args

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from events import (
    CloudEvent,
    DecodeError,
    DecodeReason,
    RepoDeleted,
    RepoSweep,
    Request,
    TagExpired,
    decode_request,
    request_event,
    to_record,
)

Headers = Sequence[tuple[str, bytes | None]]

KEY = b"acme/web/app"
STRUCTURED: list[tuple[str, bytes | None]] = [
    ("content-type", b"application/cloudevents+json; charset=utf-8")
]
TAG_DATA: dict[str, Any] = {
    "namespace": "acme",
    "repository": "web/app",
    "repository_id": 7,
    "tag": "latest",
    "tag_id": 11,
    "lifetime_end_ms": 1_700_000_000_000,
}
ENVELOPE: dict[str, Any] = {
    "specversion": "1.0",
    "id": "request-1",
    "source": "/registry",
    "type": "registry.gc.tag-expired",
    "time": "2025-01-02T03:04:05Z",
    "datacontenttype": "application/json",
    "data": TAG_DATA,
}


def encode(document: object) -> bytes:
    return json.dumps(document).encode()


def envelope(**changes: Any) -> dict[str, Any]:
    """The valid envelope with attributes replaced; a value of `...` removes the attribute."""
    merged = {**ENVELOPE, **changes}
    return {name: value for name, value in merged.items() if value is not ...}


def data(**changes: Any) -> dict[str, Any]:
    """The valid tag-expired data with fields replaced; `...` removes the field."""
    merged = {**TAG_DATA, **changes}
    return {name: value for name, value in merged.items() if value is not ...}


def binary_headers(**changes: Any) -> list[tuple[str, bytes | None]]:
    """Binary-mode headers for the valid envelope, replaced or (with `...`) removed."""
    headers: dict[str, Any] = {
        "ce_specversion": b"1.0",
        "ce_id": b"request-1",
        "ce_source": b"/registry",
        "ce_type": b"registry.gc.tag-expired",
        "ce_time": b"2025-01-02T03:04:05Z",
        "content-type": b"application/json",
        **changes,
    }
    return [(name, value) for name, value in headers.items() if value is not ...]


def reason_of(key: bytes | None, value: bytes | None, headers: Headers, **kwargs: Any) -> str:
    with pytest.raises(DecodeError) as caught:
        decode_request(key=key, value=value, headers=headers, **kwargs)
    assert caught.value.reason in get_args(DecodeReason)
    assert "\n" not in caught.value.detail
    return caught.value.reason


# Happy paths


@pytest.mark.parametrize(
    ("event_type", "payload", "model"),
    [
        ("registry.gc.tag-expired", TAG_DATA, TagExpired),
        ("registry.gc.repo-deleted", data(tag=..., tag_id=..., lifetime_end_ms=...), RepoDeleted),
        ("registry.gc.repo-sweep", data(tag=..., tag_id=..., lifetime_end_ms=...), RepoSweep),
    ],
)
def test_structured_request_decodes(
    event_type: str, payload: dict[str, Any], model: type[Any]
) -> None:
    """A structured-mode request of each type decodes into its envelope and typed data."""
    value = encode(envelope(type=event_type, data=payload))
    request = decode_request(key=KEY, value=value, headers=STRUCTURED)
    assert isinstance(request.data, model)
    assert request.data.model_dump() == payload
    assert request.event.type == event_type
    assert request.event.id == "request-1"
    assert request.event.data == payload
    assert request.key == "acme/web/app"


def test_decoded_request_keeps_extension_attributes() -> None:
    """Extension attributes of the request survive decoding."""
    value = encode(envelope(causationid="scan-9", traceparent="00-ab-cd-01"))
    request = decode_request(key=KEY, value=value, headers=STRUCTURED)
    assert request.event.model_extra == {"causationid": "scan-9", "traceparent": "00-ab-cd-01"}


def test_request_event_round_trips_through_a_record() -> None:
    """What request_event and to_record produce decodes back into the same event."""
    event = request_event(TagExpired.model_validate(TAG_DATA), source="/registry")
    value, headers = to_record(event)
    request = decode_request(key=KEY, value=value, headers=headers)
    assert request.event == event
    assert request.data == TagExpired.model_validate(TAG_DATA)


@pytest.mark.parametrize(
    "content_type",
    [
        b"application/cloudevents+json",
        b"application/cloudevents+json; charset=utf-8",
        b"application/cloudevents+json;charset=UTF-8",
        b'application/cloudevents+json; charset="utf-8"',
        b"application/cloudevents+json; charset=utf8",
        b"Application/CloudEvents+JSON ; Charset=UTF-8",
    ],
)
def test_structured_content_type_variants(content_type: bytes) -> None:
    """The structured content type matches in any case, with or without a UTF-8 charset."""
    request = decode_request(
        key=KEY, value=encode(ENVELOPE), headers=[("content-type", content_type)]
    )
    assert request.event.id == "request-1"


def test_content_type_header_name_is_case_insensitive() -> None:
    """A `Content-Type` header counts as the content-type header."""
    headers = [("Content-Type", b"application/cloudevents+json")]
    request = decode_request(key=KEY, value=encode(ENVELOPE), headers=headers)
    assert request.event.id == "request-1"


def test_structured_without_content_type_header() -> None:
    """A record without content-type whose value is a CloudEvent with specversion decodes."""
    request = decode_request(key=KEY, value=encode(ENVELOPE), headers=[("traceparent", b"x")])
    assert request.event.id == "request-1"


@pytest.mark.parametrize(
    "datacontenttype", [..., "application/json; charset=utf-8", "Application/JSON"]
)
def test_structured_datacontenttype_variants(datacontenttype: Any) -> None:
    """datacontenttype may be absent or carry a UTF-8 charset; it reads as application/json."""
    value = encode(envelope(datacontenttype=datacontenttype))
    request = decode_request(key=KEY, value=value, headers=STRUCTURED)
    assert request.event.datacontenttype == "application/json"


def test_time_with_offset_and_fraction() -> None:
    """An RFC 3339 time with fractional seconds and an offset is accepted as such."""
    value = encode(envelope(time="2025-01-02T05:04:05.123456+02:00"))
    request = decode_request(key=KEY, value=value, headers=STRUCTURED)
    assert request.event.time.isoformat() == "2025-01-02T05:04:05.123456+02:00"


@pytest.mark.parametrize(
    "content_type",
    [
        b"application/json",
        b"application/json; charset=utf-8",
        b"APPLICATION/JSON;charset=UTF-8",
        ...,
    ],
)
def test_binary_request_decodes(content_type: Any) -> None:
    """A binary-mode request (ce_* headers, the value is the data) decodes like a structured one."""
    headers = binary_headers(**{"content-type": content_type})
    request = decode_request(key=KEY, value=encode(TAG_DATA), headers=headers)
    structured = decode_request(key=KEY, value=encode(ENVELOPE), headers=STRUCTURED)
    assert request == structured


def test_binary_request_keeps_extension_headers() -> None:
    """ce_* headers beyond the required attributes become extension attributes."""
    headers = [*binary_headers(), ("ce_causationid", b"scan-9"), ("other", b"ignored")]
    request = decode_request(key=KEY, value=encode(TAG_DATA), headers=headers)
    assert request.event.model_extra == {"causationid": "scan-9"}


def test_value_at_the_size_limit_is_accepted() -> None:
    """A value exactly max_value_bytes long is not oversized."""
    value = encode(ENVELOPE)
    request = decode_request(key=KEY, value=value, headers=STRUCTURED, max_value_bytes=len(value))
    assert request.event.id == "request-1"


# Every reason code, each from a record that is wrong in that one way only


def case(
    name: str,
    reason: DecodeReason,
    detail: str,
    *,
    key: bytes | None = KEY,
    value: bytes | None,
    headers: Headers = STRUCTURED,
) -> Any:
    """A record and what its refusal must say: the reason, and a fragment of the detail."""
    return pytest.param(key, value, headers, reason, detail, id=name)


def spoiled(**changes: Any) -> bytes:
    """The valid structured value with attributes replaced (or, with `...`, removed)."""
    return encode(envelope(**changes))


def spoiled_data(**changes: Any) -> bytes:
    """The valid structured value with data fields replaced (or, with `...`, removed)."""
    return encode(envelope(data=data(**changes)))


VALID = encode(ENVELOPE)
BINARY_VALUE = encode(TAG_DATA)
CASES = [
    case("no key", "invalid-key", "no key", key=None, value=VALID),
    case("empty key", "invalid-key", "no key", key=b"", value=VALID),
    case("key not utf-8", "invalid-key", "UTF-8", key=b"acme/\xff", value=VALID),
    case("no value", "malformed-json", "no value", value=None),
    case("not json", "malformed-json", "not JSON", value=b"{not json"),
    case("empty value", "malformed-json", "not JSON", value=b""),
    case("json array", "malformed-json", "array", value=b"[1, 2]"),
    case("json string", "malformed-json", "string", value=b'"event"'),
    case("value not utf-8", "malformed-json", "UTF-8", value=b'{"a": "\xff"}'),
    case("utf-16 value", "malformed-json", "UTF-8", value=json.dumps(ENVELOPE).encode("utf-16")),
    case("NaN", "malformed-json", "NaN", value=VALID[:-1] + b', "x": NaN}'),
    case("duplicate name", "malformed-json", "duplicate", value=VALID[:-1] + b', "id": "other"}'),
    case("lone surrogate", "malformed-json", "surrogate", value=spoiled(source="/\ud800")),
    case(
        "too deep",
        "malformed-json",
        "not JSON",
        value=b'{"data": ' + b"[" * 200_000 + b"]" * 200_000 + b"}",
    ),
    case("specversion 0.3", "invalid-envelope", "specversion", value=spoiled(specversion="0.3")),
    case(
        "no specversion",
        "invalid-envelope",
        "specversion",
        value=spoiled(specversion=...),
        headers=[],
    ),
    case("empty id", "invalid-envelope", "id", value=spoiled(id="")),
    case("numeric id", "invalid-envelope", "id", value=spoiled(id=1)),
    # PostgreSQL keeps (source, id) to dedupe: no NUL, and short enough for one index entry.
    case("NUL in id", "invalid-envelope", "id", value=spoiled(id="a\u0000b")),
    case("id too long", "invalid-envelope", "id", value=spoiled(id="x" * 257)),
    case("NUL in source", "invalid-envelope", "source", value=spoiled(source="/a\u0000")),
    case("source too long", "invalid-envelope", "source", value=spoiled(source="/" * 257)),
    case("no source", "invalid-envelope", "source", value=spoiled(source=...)),
    case("no type", "invalid-envelope", "type", value=spoiled(type=...)),
    case("no time", "invalid-envelope", "time", value=spoiled(time=...)),
    case("time not rfc 3339", "invalid-envelope", "time", value=spoiled(time="2 Jan 2025")),
    case("time as epoch string", "invalid-envelope", "time", value=spoiled(time="1700000000")),
    case("time as number", "invalid-envelope", "time", value=spoiled(time=1700000000)),
    case(
        "time without offset", "invalid-envelope", "time", value=spoiled(time="2025-01-02T03:04:05")
    ),
    case("impossible time", "invalid-envelope", "time", value=spoiled(time="2025-13-02T03:04:05Z")),
    case(
        "datacontenttype text",
        "invalid-envelope",
        "datacontenttype",
        value=spoiled(datacontenttype="text/plain"),
    ),
    case(
        "datacontenttype latin-1",
        "invalid-envelope",
        "charset",
        value=spoiled(datacontenttype="application/json; charset=latin-1"),
    ),
    case("no data", "invalid-envelope", "data", value=spoiled(data=...)),
    case("data not an object", "invalid-envelope", "data", value=spoiled(data=[TAG_DATA])),
    case("subject not a string", "invalid-envelope", "subject", value=spoiled(subject=5)),
    case(
        "charset latin-1",
        "invalid-envelope",
        "charset",
        value=VALID,
        headers=[("content-type", b"application/cloudevents+json; charset=latin-1")],
    ),
    case(
        "content-type text",
        "invalid-envelope",
        "content-type",
        value=VALID,
        headers=[("content-type", b"text/plain")],
    ),
    case(
        "batch content-type",
        "invalid-envelope",
        "content-type",
        value=encode([ENVELOPE]),
        headers=[("content-type", b"application/cloudevents-batch+json")],
    ),
    case(
        "content-type not utf-8",
        "invalid-envelope",
        "content-type",
        value=VALID,
        headers=[("content-type", b"\xff")],
    ),
    case("content-type twice", "invalid-envelope", "twice", value=VALID, headers=STRUCTURED * 2),
    case(
        "content-type null",
        "invalid-envelope",
        "no value",
        value=VALID,
        headers=[("content-type", None)],
    ),
    case(
        "binary specversion 0.3",
        "invalid-envelope",
        "specversion",
        value=BINARY_VALUE,
        headers=binary_headers(ce_specversion=b"0.3"),
    ),
    case(
        "binary no id",
        "invalid-envelope",
        "id",
        value=BINARY_VALUE,
        headers=binary_headers(ce_id=...),
    ),
    case(
        "binary bad time",
        "invalid-envelope",
        "time",
        value=BINARY_VALUE,
        headers=binary_headers(ce_time=b"now"),
    ),
    case(
        "binary header not utf-8",
        "invalid-envelope",
        "ce_source",
        value=BINARY_VALUE,
        headers=binary_headers(ce_source=b"/\xff"),
    ),
    case(
        "binary header twice",
        "invalid-envelope",
        "twice",
        value=BINARY_VALUE,
        headers=[*binary_headers(), ("ce_id", b"other")],
    ),
    case(
        "binary text data",
        "invalid-envelope",
        "datacontenttype",
        value=BINARY_VALUE,
        headers=binary_headers(**{"content-type": b"text/plain"}),
    ),
    case("binary no value", "invalid-envelope", "data", value=None, headers=binary_headers()),
    case(
        "binary ce_data",
        "invalid-envelope",
        "ce_data",
        value=BINARY_VALUE,
        headers=[*binary_headers(), ("ce_data", b"{}")],
    ),
    case(
        "binary data not json",
        "malformed-json",
        "not JSON",
        value=b"tag=latest",
        headers=binary_headers(),
    ),
    case(
        "binary data array",
        "malformed-json",
        "array",
        value=encode([TAG_DATA]),
        headers=binary_headers(),
    ),
    case(
        "removal type",
        "unknown-type",
        "registry.gc.tag-removed",
        value=spoiled(type="registry.gc.tag-removed"),
    ),
    case("other type", "unknown-type", "com.example.ping", value=spoiled(type="com.example.ping")),
    case(
        "id as string", "invalid-field", "data.repository_id", value=spoiled_data(repository_id="7")
    ),
    case("bool tag_id", "invalid-field", "data.tag_id", value=spoiled_data(tag_id=True)),
    case(
        "float lifetime",
        "invalid-field",
        "data.lifetime_end_ms",
        value=spoiled_data(lifetime_end_ms=1.5),
    ),
    case("missing tag", "invalid-field", "data.tag", value=spoiled_data(tag=...)),
    case("empty tag", "invalid-field", "data.tag", value=spoiled_data(tag="")),
    case("NUL in tag", "invalid-field", "data.tag", value=spoiled_data(tag="v\u00001")),
    case("tag too long", "invalid-field", "data.tag", value=spoiled_data(tag="v" * 1025)),
    case("extra field", "invalid-field", "data.color", value=spoiled_data(color="red")),
    case(
        "tag on a sweep", "invalid-field", "data.tag", value=spoiled(type="registry.gc.repo-sweep")
    ),
    case("other repository", "key-mismatch", "'acme/other'", key=b"acme/other", value=VALID),
    case("other namespace", "key-mismatch", "'acme/web/app'", key=b"beta/web/app", value=VALID),
    case("key with padding", "key-mismatch", "acme/web/app", key=b"acme/web/app ", value=VALID),
]


@pytest.mark.parametrize(("key", "value", "headers", "reason", "detail"), CASES)
def test_refusal_reason(
    key: bytes | None, value: bytes | None, headers: Headers, reason: str, detail: str
) -> None:
    """A record wrong in one way is refused with that way's reason, and the detail says where."""
    with pytest.raises(DecodeError) as caught:
        decode_request(key=key, value=value, headers=headers)
    assert caught.value.reason == reason
    assert detail in caught.value.detail
    assert "\n" not in caught.value.detail


def test_oversized_value() -> None:
    """A value longer than max_value_bytes is refused as oversized-value, naming both sizes."""
    value = encode(ENVELOPE)
    with pytest.raises(DecodeError) as caught:
        decode_request(key=KEY, value=value, headers=STRUCTURED, max_value_bytes=len(value) - 1)
    assert caught.value.reason == "oversized-value"
    assert str(len(value)) in caught.value.detail


def test_default_size_limit_is_one_mebibyte() -> None:
    """Without max_value_bytes, a value over 1 MiB is refused before anything else is read."""
    assert reason_of(None, b" " * (1_048_576 + 1), []) == "oversized-value"


def test_every_reason_has_a_case() -> None:
    """The cases above cover every reason code DecodeReason names."""
    covered = {case.values[3] for case in CASES} | {"oversized-value"}
    assert covered == set(get_args(DecodeReason))


def test_decode_error_message() -> None:
    """A DecodeError's message is `reason: detail`, and it says it is not worth retrying."""
    error = DecodeError("unknown-type", "type 'x' is not a request type")
    assert str(error) == "unknown-type: type 'x' is not a request type"
    assert error.retriable is False
    assert isinstance(error, ValueError)


def test_detail_is_one_bounded_line() -> None:
    """Control characters in the input are escaped in the detail, and a long detail is cut."""
    value = encode(envelope(type="evil\ntype\x1b[31m" + "x" * 2000))
    with pytest.raises(DecodeError) as caught:
        decode_request(key=KEY, value=value, headers=STRUCTURED)
    assert caught.value.reason == "unknown-type"
    assert caught.value.detail.isprintable()
    assert len(caught.value.detail) <= 400


def test_invalid_field_detail_names_each_field() -> None:
    """When several fields are wrong, the invalid-field detail names each of them."""
    value = encode(envelope(data=data(tag_id="1", repository_id=None)))
    with pytest.raises(DecodeError) as caught:
        decode_request(key=KEY, value=value, headers=STRUCTURED)
    assert "data.tag_id" in caught.value.detail
    assert "data.repository_id" in caught.value.detail


# The order of the checks: size, key, JSON/envelope, type, fields, key match


def test_size_is_checked_before_key() -> None:
    """An oversized value with no key is refused as oversized-value."""
    assert reason_of(None, b"{" * 20, STRUCTURED, max_value_bytes=10) == "oversized-value"


def test_key_is_checked_before_json() -> None:
    """A record with no key and a value that is not JSON is refused as invalid-key."""
    assert reason_of(None, b"{not json", STRUCTURED) == "invalid-key"


def test_envelope_is_checked_before_type() -> None:
    """An unknown type with an invalid envelope is refused as invalid-envelope."""
    value = encode(envelope(type="com.example.ping", id=""))
    assert reason_of(KEY, value, STRUCTURED) == "invalid-envelope"


def test_type_is_checked_before_fields() -> None:
    """An unknown type with data no request has is refused as unknown-type."""
    value = encode(envelope(type="com.example.ping", data={"ping": 1}))
    assert reason_of(KEY, value, STRUCTURED) == "unknown-type"


def test_fields_are_checked_before_key_match() -> None:
    """Invalid data under a mismatched key is refused as invalid-field."""
    value = encode(envelope(data=data(tag_id="1")))
    assert reason_of(b"acme/other", value, STRUCTURED) == "invalid-field"


# Whatever the bytes, a Request or a DecodeError

HEADER_NAMES = st.sampled_from(
    ["content-type", "Content-Type", "ce_specversion", "ce_id", "ce_source", "ce_type", "ce_time",
     "ce_datacontenttype", "ce_data", "ce_x", "traceparent"]
)  # fmt: skip
HEADER_VALUES = st.one_of(
    st.none(),
    st.binary(max_size=40),
    st.sampled_from(
        [b"application/cloudevents+json", b"application/json", b"1.0", b"request-1",
         b"/registry", b"registry.gc.tag-expired", b"2025-01-02T03:04:05Z", b"text/plain",
         b"application/json; charset=latin-1"]
    ),
)  # fmt: skip
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
# Envelopes near the valid one, so the fuzzing reaches the type and field checks.
NEAR_ENVELOPES = st.builds(
    lambda removed, replaced, data_changes: {
        **{name: value for name, value in ENVELOPE.items() if name not in removed},
        **replaced,
        "data": {**TAG_DATA, **data_changes},
    },
    st.sets(st.sampled_from(sorted(ENVELOPE)), max_size=1),
    st.dictionaries(st.sampled_from([*ENVELOPE, "subject", "x"]), JSON_VALUES, max_size=2),
    st.dictionaries(st.sampled_from([*TAG_DATA, "x"]), JSON_VALUES, max_size=3),
)
VALUES = st.one_of(
    st.none(),
    st.binary(max_size=200),
    NEAR_ENVELOPES.map(encode),
    st.dictionaries(st.text(max_size=8), JSON_VALUES, max_size=4).map(encode),
)
KEYS = st.one_of(st.just(KEY), st.just(KEY), st.just(KEY), st.none(), st.binary(max_size=20))
HEADERS: st.SearchStrategy[list[tuple[str, bytes | None]]] = st.one_of(
    st.just(STRUCTURED),
    st.just([]),
    st.just(binary_headers()),
    st.lists(st.tuples(HEADER_NAMES, HEADER_VALUES), max_size=8),
    st.lists(st.tuples(HEADER_NAMES, HEADER_VALUES), max_size=3).map(
        lambda extra: [*binary_headers(), *extra]
    ),
)


@settings(max_examples=300, deadline=None)
@given(
    key=KEYS,
    value=VALUES,
    headers=HEADERS,
)
def test_any_record_decodes_or_is_refused(
    key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes | None]]
) -> None:
    """Whatever the key, value and header bytes: a Request or a DecodeError, nothing else."""
    outcome: Request | DecodeError
    try:
        outcome = decode_request(key=key, value=value, headers=headers)
    except DecodeError as error:
        outcome = error
    if isinstance(outcome, DecodeError):
        assert outcome.reason in get_args(DecodeReason)
        assert outcome.detail.isprintable()
    else:
        assert isinstance(outcome.event, CloudEvent)
        assert outcome.key.encode() == key
        outcome.event.to_json()  # what was accepted can be written back
