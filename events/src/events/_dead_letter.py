"""The dead-letter event (docs/events.md): a refused input, kept whole with the reason."""

from __future__ import annotations

import base64
import binascii
from datetime import datetime
from typing import ClassVar, Literal

from pydantic import Field, model_validator

from events._envelope import COLLECTOR_SOURCE, CloudEvent, envelope
from events._model import TYPE_PREFIX, EventData
from events._reasons import RejectionReason

Encoding = Literal["utf-8", "base64"]


class RequestRejected(EventData):
    """The `data` of a dead letter: why the record was refused, and the record itself.

    `key` and `value` hold the original bytes as text: decoded when they are
    UTF-8, base64 otherwise, as `key_encoding` and `value_encoding` say. A
    record without a key (or value) has null there and a null encoding.
    """

    event_type: ClassVar[str] = TYPE_PREFIX + "request-rejected"

    reason: RejectionReason = Field(
        description="Why the record was refused: a stable machine code (see the reason codes).",
    )
    detail: str = Field(description="What exactly was wrong, in one line for a human.")
    topic: str = Field(description="The topic the refused record was read from.")
    partition: int = Field(ge=0, description="The refused record's partition.")
    offset: int = Field(ge=0, description="The refused record's offset.")
    key: str | None = Field(
        description="The refused record's key, as `key_encoding` says; null when it had none."
    )
    key_encoding: Encoding | None = Field(
        description="`utf-8`: `key` is the original bytes decoded; `base64`: they were not"
        " UTF-8; null with a null `key`."
    )
    value: str | None = Field(
        description="The refused record's value, as `value_encoding` says; null when it had"
        " none or when it is not kept here (a request refused when its turn came, or a"
        " value larger than the dead-letter topic takes): `detail` then says where it stays."
    )
    value_encoding: Encoding | None = Field(
        description="`utf-8` or `base64`, as for `key_encoding`; null with a null `value`."
    )

    @model_validator(mode="after")
    def _encodings_match(self) -> RequestRejected:
        for name, text, encoding in (
            ("key", self.key, self.key_encoding),
            ("value", self.value, self.value_encoding),
        ):
            if (text is None) != (encoding is None):
                raise ValueError(f"{name} and {name}_encoding must both be null or both be set")
            if encoding == "base64" and text is not None:
                try:
                    base64.b64decode(text, validate=True)
                except binascii.Error as exc:
                    raise ValueError(f"{name} is not base64: {exc}") from None
        return self

    @classmethod
    def of_record(
        cls,
        *,
        reason: RejectionReason,
        detail: str,
        topic: str,
        partition: int,
        offset: int,
        key: bytes | None,
        value: bytes | None,
    ) -> RequestRejected:
        """Describe a refused record, keeping its key and value byte for byte."""
        key_text, key_encoding = _to_text(key)
        value_text, value_encoding = _to_text(value)
        return cls(
            reason=reason,
            detail=detail,
            topic=topic,
            partition=partition,
            offset=offset,
            key=key_text,
            key_encoding=key_encoding,
            value=value_text,
            value_encoding=value_encoding,
        )

    @property
    def key_bytes(self) -> bytes | None:
        """The refused record's key, as it was."""
        return _to_bytes(self.key, self.key_encoding)

    @property
    def value_bytes(self) -> bytes | None:
        """The refused record's value, as it was."""
        return _to_bytes(self.value, self.value_encoding)


def rejection_event(
    *,
    reason: RejectionReason,
    detail: str,
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    value: bytes | None,
    source: str = COLLECTOR_SOURCE,
    causation_id: str | None = None,
    time: datetime | None = None,
    event_id: str | None = None,
) -> CloudEvent:
    """The dead letter for a refused record; its Kafka key is the record's own key.

    `causation_id` is the refused request's id when it could be read; `event_id`
    a fixed id (a fresh UUID when not given).
    """
    data = RequestRejected.of_record(
        reason=reason,
        detail=detail,
        topic=topic,
        partition=partition,
        offset=offset,
        key=key,
        value=value,
    )
    extensions = {} if causation_id is None else {"causationid": causation_id}
    return envelope(data, source=source, event_id=event_id, time=time, **extensions)


def _to_text(raw: bytes | None) -> tuple[str | None, Encoding | None]:
    if raw is None:
        return None, None
    try:
        return raw.decode(), "utf-8"
    except UnicodeDecodeError:
        return base64.b64encode(raw).decode("ascii"), "base64"


def _to_bytes(text: str | None, encoding: Encoding | None) -> bytes | None:
    if text is None:
        return None
    return base64.b64decode(text) if encoding == "base64" else text.encode()
