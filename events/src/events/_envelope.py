"""CloudEvents 1.0 in structured JSON mode (CONTRACT §2)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from events._model import NO_NUL, EventData
from events._removals import Removal
from events._requests import RequestData

SPECVERSION = "1.0"
CONTENT_TYPE = "application/cloudevents+json; charset=utf-8"
COLLECTOR_SOURCE = "/registry-gc/collector"

#: Kafka record headers: a name and its raw bytes, as aiokafka gives and takes them.
Headers = list[tuple[str, bytes]]


class CloudEvent(BaseModel):
    """A CloudEvents 1.0 event; extension attributes such as `causationid` are kept."""

    model_config = ConfigDict(frozen=True, extra="allow")

    specversion: Literal["1.0"]
    # Bounded so that the pair, kept to dedupe requests, fits one PostgreSQL index entry.
    id: str = Field(min_length=1, max_length=256, pattern=NO_NUL)
    source: str = Field(min_length=1, max_length=256, pattern=NO_NUL)
    type: str = Field(min_length=1)
    time: AwareDatetime
    datacontenttype: Literal["application/json"] = "application/json"
    subject: str | None = None
    data: dict[str, Any]

    def to_json(self) -> str:
        return self.model_dump_json(exclude_none=True)


def envelope(
    data: EventData,
    *,
    source: str,
    event_id: str | None = None,
    time: datetime | None = None,
    subject: str | None = None,
    **extensions: str,
) -> CloudEvent:
    """Wrap an event's data: its type from the model, a fresh UUID unless given, now
    unless given. The id is fixed here, once, for good."""
    return CloudEvent(
        specversion=SPECVERSION,
        id=str(uuid.uuid4()) if event_id is None else event_id,
        source=source,
        type=data.event_type,
        time=time or datetime.now(UTC),
        subject=subject,
        data=data.model_dump(mode="json"),
        **extensions,
    )


def removal_event(
    removal: Removal,
    *,
    causation_id: str,
    time: datetime | None = None,
    event_id: str | None = None,
    source: str = COLLECTOR_SOURCE,
) -> CloudEvent:
    """A removal's event, naming the request that caused it (`causationid`)."""
    return envelope(
        removal,
        source=source,
        event_id=event_id,
        time=time,
        subject=removal.subject,
        causationid=causation_id,
    )


def request_event(
    data: RequestData,
    *,
    source: str,
    event_id: str | None = None,
    time: datetime | None = None,
) -> CloudEvent:
    """Wrap a request in its envelope, for whoever asks the collector for work."""
    return envelope(data, source=source, event_id=event_id, time=time)


def to_record(event: CloudEvent) -> tuple[bytes, Headers]:
    """The Kafka record value and headers of an event in structured mode (CONTRACT §2).

    The key is not the envelope's to choose: it depends on the topic (CONTRACT §1).
    """
    return event.to_json().encode(), [("content-type", CONTENT_TYPE.encode())]
