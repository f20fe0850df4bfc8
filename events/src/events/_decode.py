"""Decode a record of the requests topic into a typed request, or say why not.

Structured content mode is what CONTRACT §2 pins; binary content mode (`ce_*`
headers, the value is the data) is accepted too. A record that names neither
mode is read as structured, its value the whole event. Every refusal is a
`DecodeError` with a stable machine `reason`, checked in this order: size, key,
JSON and envelope, type, fields, key match.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, NoReturn

from pydantic import ValidationError

from events._envelope import CloudEvent
from events._reasons import DecodeReason
from events._requests import REQUEST_TYPES, RequestData

MAX_VALUE_BYTES = 1_048_576

_STRUCTURED = "application/cloudevents+json"
_JSON = "application/json"
_UTF8 = frozenset({"utf-8", "utf8"})
# RFC 3339 §5.6 date-time; pydantic alone would also take "1700000000" or a bare date.
_RFC3339 = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:[Zz]|[+-]\d{2}:\d{2})", re.ASCII
)
_SURROGATE = re.compile("[\ud800-\udfff]")
_DETAIL_LIMIT = 400
_QUOTE_LIMIT = 80
_ERRORS_SHOWN = 3


class DecodeError(ValueError):
    """The record is not a request the collector can act on."""

    retriable: ClassVar[bool] = False

    def __init__(self, reason: DecodeReason, detail: str) -> None:
        self.reason: DecodeReason = reason
        self.detail = _one_line(detail)
        super().__init__(f"{reason}: {self.detail}")


@dataclass(frozen=True, slots=True)
class Request:
    """A request decoded from a record: its validated envelope and its typed `data`."""

    event: CloudEvent
    data: RequestData

    @property
    def key(self) -> str:
        """The record key the request came with: `<namespace>/<repository>`."""
        return self.data.repository_path


def decode_request(
    *,
    key: bytes | None,
    value: bytes | None,
    headers: Sequence[tuple[str, bytes | None]],
    max_value_bytes: int = MAX_VALUE_BYTES,
) -> Request:
    """Validate one record of the requests topic; raise `DecodeError` saying why not."""
    if value is not None and len(value) > max_value_bytes:
        _refuse("oversized-value", f"value of {len(value)} bytes exceeds {max_value_bytes}")
    record_key = _decode_key(key)
    event = _decode_event(value, headers)
    model = REQUEST_TYPES.get(event.type)
    if model is None:
        _refuse(
            "unknown-type",
            f"type {_quote(event.type)} is not a request type"
            f" (expected one of {', '.join(REQUEST_TYPES)})",
        )
    try:
        data = model.model_validate(event.data)
    except ValidationError as exc:
        _refuse("invalid-field", describe_invalid(exc, "data"))
    if data.repository_path != record_key:
        _refuse(
            "key-mismatch",
            f"record key {_quote(record_key)} differs from the data's"
            f" {_quote(data.repository_path)}",
        )
    return Request(event=event, data=data)


def _decode_key(key: bytes | None) -> str:
    if not key:
        _refuse("invalid-key", "the record has no key")
    try:
        return key.decode()
    except UnicodeDecodeError as exc:
        _refuse("invalid-key", f"the record key is not UTF-8 (byte {exc.start})")


def _decode_event(value: bytes | None, headers: Sequence[tuple[str, bytes | None]]) -> CloudEvent:
    content_type: str | None = None
    ce_headers: dict[str, bytes | None] = {}
    for name, raw in headers:
        lowered = name.lower()
        if lowered == "content-type":
            if content_type is not None:
                _refuse("invalid-envelope", "the content-type header is given twice")
            content_type = _header_text("content-type", raw)
        elif lowered.startswith("ce_"):
            if lowered[3:] in ce_headers:
                _refuse("invalid-envelope", f"the header {_quote(lowered)} is given twice")
            ce_headers[lowered[3:]] = raw
    media_type = None if content_type is None else _media_type(content_type)
    if media_type == _STRUCTURED:
        return _envelope(_json_object(value))
    if "specversion" in ce_headers:
        return _binary(value, ce_headers, media_type)
    if media_type is None or media_type == _JSON:
        return _unmarked(value, media_type)
    _refuse(
        "invalid-envelope",
        f"content-type {_quote(media_type)} is not {_STRUCTURED}"
        " and there is no ce_specversion header (binary mode)",
    )


def _unmarked(value: bytes | None, media_type: str | None) -> CloudEvent:
    """A record without the structured content type or a ce_specversion header: structured
    all the same when its value is an event. Its producer forgot the content type, or
    gave the data's: the CloudEvents SDK's Kafka structured mode (`to_structured` of
    `cloudevents.v1.kafka`) moves `datacontenttype` out of the envelope into the header."""
    attributes = _json_object(value)
    if "specversion" not in attributes:
        shown = "no content-type" if media_type is None else f"content-type {_quote(media_type)}"
        _refuse(
            "invalid-envelope",
            f"{shown}, no ce_specversion header (binary mode),"
            " and the value has no specversion (structured mode)",
        )
    if media_type is not None:
        attributes.setdefault("datacontenttype", media_type)
    return _envelope(attributes)


def _binary(
    value: bytes | None, ce_headers: dict[str, bytes | None], media_type: str | None
) -> CloudEvent:
    attributes: dict[str, Any] = {
        name: _header_text(f"ce_{name}", raw) for name, raw in ce_headers.items()
    }
    if "data" in attributes:
        _refuse(
            "invalid-envelope", "binary mode carries the data in the value, not a ce_data header"
        )
    if media_type is not None:
        attributes["datacontenttype"] = media_type
    if value is None:
        _refuse("invalid-envelope", "data: the binary-mode record has no value")
    attributes["data"] = _json_object(value)
    return _envelope(attributes)


def _envelope(attributes: dict[str, Any]) -> CloudEvent:
    time = attributes.get("time")
    if isinstance(time, str) and not _RFC3339.fullmatch(time):
        _refuse("invalid-envelope", f"time: {_quote(time)} is not an RFC 3339 timestamp")
    if time is not None and not isinstance(time, str):
        _refuse("invalid-envelope", f"time: a JSON {_json_kind(time)}, not an RFC 3339 string")
    declared = attributes.get("datacontenttype")
    if isinstance(declared, str):
        attributes["datacontenttype"] = _media_type(declared)
    try:
        return CloudEvent.model_validate(attributes)
    except ValidationError as exc:
        _refuse("invalid-envelope", describe_invalid(exc))


def _json_object(value: bytes | None) -> dict[str, Any]:
    if value is None:
        _refuse("malformed-json", "the record has no value")
    try:
        text = value.decode()
    except UnicodeDecodeError as exc:
        _refuse("malformed-json", f"the value is not UTF-8 (byte {exc.start})")
    try:
        document = json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        _refuse("malformed-json", f"the value is not JSON: {exc}")
    if not isinstance(document, dict):
        _refuse("malformed-json", f"the value is a JSON {_json_kind(document)}, not an object")
    if _has_lone_surrogate(document):
        _refuse("malformed-json", "the value escapes a lone UTF-16 surrogate (\\ud800-\\udfff)")
    return document


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """Refuse duplicate names: readers disagree on which one counts."""
    document: dict[str, Any] = {}
    for name, item in pairs:
        if name in document:
            raise ValueError(f"duplicate name {_quote(name)}")
        document[name] = item
    return document


def _no_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


def _has_lone_surrogate(document: dict[str, Any]) -> bool:
    """Whether a string holds a surrogate, which no UTF-8 encoder can write back."""
    stack: list[Any] = [document]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                return True
        elif isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def _header_text(name: str, raw: bytes | None) -> str:
    if raw is None:
        _refuse("invalid-envelope", f"the {name} header has no value")
    try:
        return raw.decode()
    except UnicodeDecodeError:
        _refuse("invalid-envelope", f"the {name} header is not UTF-8")


def _media_type(content_type: str) -> str:
    """The lower-case media type of a content type whose charset, if any, is UTF-8."""
    media_type, *parameters = content_type.split(";")
    for parameter in parameters:
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "charset" and value.strip().strip('"').lower() not in _UTF8:
            _refuse(
                "invalid-envelope", f"content type {_quote(content_type)}: charset is not UTF-8"
            )
    return media_type.strip().lower()


def describe_invalid(exc: ValidationError, prefix: str | None = None) -> str:
    """One line naming the first offending fields and what is wrong with each."""
    problems = []
    for error in exc.errors(include_url=False):
        location = ".".join(str(part) for part in ((prefix,) if prefix else ()) + error["loc"])
        problems.append(f"{location or '(root)'}: {error['msg']}")
    shown = "; ".join(problems[:_ERRORS_SHOWN])
    hidden = len(problems) - _ERRORS_SHOWN
    return f"{shown}; and {hidden} more" if hidden > 0 else shown


def _json_kind(value: object) -> str:
    kinds = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    return kinds.get(type(value), "number")


def _quote(text: str) -> str:
    """The text as a Python literal, so control characters show; long text is cut."""
    return repr(text if len(text) <= _QUOTE_LIMIT else text[:_QUOTE_LIMIT] + "…")


def _one_line(text: str) -> str:
    """Escape what would break a log line; cut what would flood it."""
    line = "".join(char if char.isprintable() else ascii(char)[1:-1] for char in text)
    return line if len(line) <= _DETAIL_LIMIT else line[: _DETAIL_LIMIT - 1] + "…"


def _refuse(reason: DecodeReason, detail: str) -> NoReturn:
    raise DecodeError(reason, detail)
