"""The dead-letter topic read back (`collector dead-letters`): what the collector refused,
and the refused requests put back on the requests topic once their cause is fixed.

The topic is replayed without a consumer group up to where it ended when the
command began (see ``replay``). Reading and selecting are pure functions of the
records read, so a listing is the same bytes every time.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import structlog
from pydantic import ValidationError

from collector import kafka
from collector.config import Settings
from collector.sinks.audit import parse_since
from collector.sinks.replay import Record, replay
from events import (
    CONTENT_TYPE,
    CloudEvent,
    DecodeError,
    InvalidRecord,
    RequestRejected,
    decode_event,
    decode_request,
    describe_invalid,
)

log = structlog.get_logger(__name__)

#: Longest detail a listing line shows; ``--json`` carries it whole.
DETAIL_WIDTH = 120

#: The header every request carries in structured content mode (CONTRACT §2).
_HEADERS = [("content-type", CONTENT_TYPE.encode())]


@dataclass(frozen=True)
class Query:
    """Which dead letters to select: every filter given must match (any of its values)."""

    since: datetime | None = None
    reasons: frozenset[str] = frozenset()

    @classmethod
    def parse(cls, since: str | None, reasons: Iterable[str]) -> Query:
        """The query the command line asks for; a usage error for a malformed time."""
        return cls(None if since is None else parse_since(since), frozenset(reasons))

    def matches(self, letter: DeadLetter) -> bool:
        if self.since is not None and letter.event.time < self.since:
            return False
        return not self.reasons or letter.data.reason in self.reasons


@dataclass(frozen=True)
class DeadLetter:
    """A dead letter as read: its event, its `data`, and where it sits on its topic."""

    partition: int
    offset: int
    event: CloudEvent
    data: RequestRejected


@dataclass(frozen=True)
class Unreadable:
    """A record of the dead-letter topic that is not a valid dead letter."""

    topic: str
    partition: int
    offset: int
    error: str


@dataclass
class Listing:
    """The selected dead letters and the unreadable records, in topic order."""

    #: Each entry is a DeadLetter, or an Unreadable record where it was met (no filter
    #: can tell whether one matches, and hiding them would hide the problem).
    entries: list[DeadLetter | Unreadable] = field(default_factory=list)
    #: Extra copies of a listed dead letter (a refused record redelivered and refused
    #: again gets the same id).
    duplicates: int = 0

    @property
    def letters(self) -> list[DeadLetter]:
        return [entry for entry in self.entries if isinstance(entry, DeadLetter)]

    @property
    def unreadable(self) -> int:
        return sum(1 for entry in self.entries if isinstance(entry, Unreadable))

    def by_reason(self) -> dict[str, int]:
        return dict(sorted(Counter(letter.data.reason for letter in self.letters).items()))


async def dead_letters(settings: Settings, query: Query) -> Listing:
    """Replay the dead-letter topic and select what ``query`` asks for."""
    topic = settings.topic_dead_letter
    return select(topic, await replay(settings, topic, since=query.since), query)


def select(topic: str, records: Iterable[Record], query: Query) -> Listing:
    """The dead letters of ``records`` (read from ``topic``) that match ``query``, first
    copy of each id kept; every unreadable record."""
    listing = Listing()
    seen: set[str] = set()
    for record in records:
        try:
            letter = read(record)
        except InvalidRecord as exc:
            listing.entries.append(Unreadable(topic, record.partition, record.offset, str(exc)))
            continue
        if not query.matches(letter):
            continue
        if letter.event.id in seen:
            listing.duplicates += 1
        else:
            seen.add(letter.event.id)
            listing.entries.append(letter)
    return listing


def read(record: Record) -> DeadLetter:
    """The dead letter a record holds; InvalidRecord saying why it holds none."""
    event = decode_event(record.value)
    if event.type != RequestRejected.event_type:
        raise InvalidRecord(f"an event of type {event.type!r}, not {RequestRejected.event_type}")
    try:
        data = RequestRejected.model_validate(event.data)
    except ValidationError as exc:
        raise InvalidRecord(f"not a valid dead letter: {describe_invalid(exc, 'data')}") from exc
    return DeadLetter(record.partition, record.offset, event, data)


# -- resubmission ----------------------------------------------------------------


@dataclass(frozen=True)
class Resend:
    """The record to put back on the requests topic for a dead letter."""

    letter: DeadLetter
    key: bytes
    value: bytes


@dataclass(frozen=True)
class Skipped:
    """A selected dead letter that is not resubmitted, and why."""

    letter: DeadLetter
    reason: str


@dataclass
class Resubmission:
    resubmitted: list[DeadLetter] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """Whether every selected dead letter was resubmitted."""
        return not self.skipped


def resend_of(letter: DeadLetter, *, max_value_bytes: int) -> Resend | Skipped:
    """The record that resubmits ``letter``, or why none would be accepted: a value the
    request decoder refuses would be refused again, for the same reason. A reason that
    depends on the database (the repository was not marked) is the operator's to fix."""
    data = letter.data
    key, value = data.key_bytes, data.value_bytes
    if value is None:
        return Skipped(
            letter,
            "the dead letter does not keep the value; the original stays at"
            f" {data.topic} partition {data.partition} offset {data.offset}",
        )
    try:
        decode_request(key=key, value=value, headers=_HEADERS, max_value_bytes=max_value_bytes)
    except DecodeError as exc:
        if exc.reason == "invalid-envelope" and _is_bare_data(value):
            return Skipped(
                letter,
                "sent in binary content mode: the value is the request's data alone, and"
                " a dead letter does not keep the record's ce_* headers",
            )
        return Skipped(letter, str(exc))
    assert key is not None  # the decoder refuses a record without a key
    return Resend(letter, key, value)


def _is_bare_data(value: bytes) -> bool:
    """A JSON object with no `specversion`: what binary content mode puts in a value."""
    try:
        decoded = json.loads(value)
    except ValueError:
        return False
    return isinstance(decoded, dict) and "specversion" not in decoded


async def resubmit(settings: Settings, letters: Sequence[DeadLetter]) -> Resubmission:
    """Put the original record of each of ``letters`` back on the requests topic as a new
    record (same key, same value bytes), once the broker acknowledged every one; skip
    the letters whose record would be refused again."""
    result = Resubmission()
    resends: list[Resend] = []
    for letter in letters:
        match resend_of(letter, max_value_bytes=settings.max_request_bytes):
            case Resend() as resend:
                resends.append(resend)
            case Skipped() as skipped:
                result.skipped.append(skipped)
    if resends:
        records = [(resend.key, resend.value, _HEADERS) for resend in resends]
        sent = await kafka.send_all(settings, settings.topic_requests, records)
        for resend, metadata in zip(resends, sent, strict=True):
            log.info(
                "dead_letter_resubmitted",
                dead_letter_id=resend.letter.event.id,
                partition=resend.letter.data.partition,
                offset=resend.letter.data.offset,
                resubmitted_partition=metadata.partition,
                resubmitted_offset=metadata.offset,
            )
            result.resubmitted.append(resend.letter)
    return result


# -- output --------------------------------------------------------------------


def _time(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _key(data: RequestRejected) -> str:
    """The key as one token: as it is when that is unambiguous, quoted otherwise."""
    if data.key is None:
        return "(no key)"
    if data.key_encoding == "base64":
        return f"base64:{data.key}"
    key = data.key
    plain = key.isprintable() and not any(char.isspace() for char in key)
    # Quoted as well: the empty key, and keys that would read as the other forms.
    return key if plain and key and not key.startswith(('"', "(", "base64:")) else json.dumps(key)


def shorten(detail: str, width: int = DETAIL_WIDTH) -> str:
    """The detail on one line, cut to ``width`` characters with an ellipsis."""
    line = " ".join(detail.split())
    return line if len(line) <= width else line[: width - 1].rstrip() + "…"


def text_lines(listing: Listing) -> Iterator[str]:
    """One line per entry: time, reason, origin (topic/partition/offset), key, detail."""
    for entry in listing.entries:
        if isinstance(entry, Unreadable):
            yield (
                f"unreadable {entry.topic}/{entry.partition}/{entry.offset}: {shorten(entry.error)}"
            )
            continue
        data = entry.data
        yield (
            f"{_time(entry.event.time)} {data.reason}"
            f" {data.topic}/{data.partition}/{data.offset} {_key(data)} {shorten(data.detail)}"
        )


def json_lines(listing: Listing, resubmission: Resubmission | None = None) -> Iterator[str]:
    """One JSON object per entry, then one ``{"summary": …}`` object."""
    for entry in listing.entries:
        if isinstance(entry, Unreadable):
            yield json.dumps(
                {
                    "unreadable": {
                        "topic": entry.topic,
                        "partition": entry.partition,
                        "offset": entry.offset,
                        "error": entry.error,
                    }
                }
            )
            continue
        yield json.dumps(
            {"id": entry.event.id, "time": _time(entry.event.time), **entry.data.model_dump()}
        )
    yield json.dumps({"summary": summary(listing, resubmission)})


def skipped_lines(resubmission: Resubmission) -> Iterator[str]:
    """One line per dead letter not resubmitted, naming its original position."""
    for skipped in resubmission.skipped:
        origin = f"{skipped.letter.data.partition}/{skipped.letter.data.offset}"
        yield f"dead-letters: offset {origin} not resubmitted: {skipped.reason}"


def summary(listing: Listing, resubmission: Resubmission | None = None) -> dict[str, Any]:
    """Counts by reason; how many were resubmitted and skipped when that was asked."""
    counts: dict[str, Any] = {
        "dead_letters": len(listing.letters),
        "by_reason": listing.by_reason(),
        "duplicates": listing.duplicates,
        "unreadable": listing.unreadable,
    }
    if resubmission is not None:
        counts["resubmitted"] = len(resubmission.resubmitted)
        counts["skipped"] = len(resubmission.skipped)
    return counts


def summary_line(listing: Listing, resubmission: Resubmission | None = None) -> str:
    counts = summary(listing, resubmission)
    reasons = ", ".join(f"{reason} {count}" for reason, count in counts["by_reason"].items())
    line = (
        f"dead-letters: {counts['dead_letters']} listed"
        + (f" ({reasons})" if reasons else "")
        + f", {counts['duplicates']} duplicate(s), {counts['unreadable']} unreadable"
    )
    if resubmission is not None:
        line += f"; {counts['resubmitted']} resubmitted, {counts['skipped']} skipped"
    return line
