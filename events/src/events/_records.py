"""Reading records of the removals topic (what a downstream consumer does): the
CloudEvent, then the removal it reports."""

from __future__ import annotations

from pydantic import ValidationError

from events._decode import describe_invalid
from events._envelope import CloudEvent
from events._removals import REMOVAL_TYPES, Removal


class InvalidRecord(ValueError):
    """The record is not a CloudEvent, or not a valid removal."""


def decode_event(value: bytes | None) -> CloudEvent:
    """The CloudEvent of a record value in structured mode (docs/events.md)."""
    if value is None:
        raise InvalidRecord("the record has no value")
    try:
        return CloudEvent.model_validate_json(value)
    except ValidationError as exc:
        raise InvalidRecord(f"not a CloudEvent: {describe_invalid(exc)}") from exc


def removal_of(event: CloudEvent) -> Removal | None:
    """The typed removal an event reports; None for an event of another type."""
    model = REMOVAL_TYPES.get(event.type)
    if model is None:
        return None
    try:
        return model.model_validate(event.data)
    except ValidationError as exc:
        raise InvalidRecord(f"not a valid {event.type}: {describe_invalid(exc)}") from exc


def causation_id(event: CloudEvent) -> str | None:
    """The `causationid` extension attribute: the id of the request behind a removal."""
    value = (event.model_extra or {}).get("causationid")
    return value if isinstance(value, str) and value else None
