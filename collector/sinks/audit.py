"""The audit replay (`collector audit`): what was removed, when, and which request caused it.

Both topics are replayed up to where they ended when the audit began (see
``replay``); each removal's `causationid` is looked up among the requests. The
report is a pure function of the records read, sorted by event time then id,
so two audits of the same topics print the same bytes.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from collector.config import Settings
from collector.errors import ConfigError
from collector.sinks.replay import Record, replay
from events import (
    TYPE_PREFIX,
    BlobRemoved,
    CloudEvent,
    DecodeError,
    InvalidRecord,
    LegacyManifestRemoved,
    ManifestRemoved,
    Removal,
    RepositoryRemoval,
    TagRemoved,
    causation_id,
    command_of,
    decode_event,
    decode_request,
    removal_of,
)

_DATE = re.compile(r"\d{4}-\d{2}-\d{2}", re.ASCII)
_DATE_TIME = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:[Zz]|[+-]\d{2}:\d{2})", re.ASCII
)


def parse_since(text: str) -> datetime:
    """An RFC 3339 time (with its offset) or a date (midnight UTC); a usage error otherwise."""
    try:
        if _DATE.fullmatch(text):
            return datetime.combine(date.fromisoformat(text), datetime.min.time(), UTC)
        if _DATE_TIME.fullmatch(text):
            return datetime.fromisoformat(text.upper().replace(" ", "T"))
    except ValueError:
        pass  # well-formed but impossible, like month 13: the same usage error
    raise ConfigError(
        f"invalid --since {text!r}: expected an RFC 3339 time (2025-01-31T12:00:00Z) "
        "or a date (2025-01-31)"
    )


@dataclass(frozen=True)
class Query:
    """Which removals to report: every filter given must match (any of its values)."""

    since: datetime | None = None
    repositories: frozenset[str] = frozenset()
    digests: frozenset[str] = frozenset()

    @classmethod
    def parse(cls, since: str | None, repositories: Iterable[str], digests: Iterable[str]) -> Query:
        """The query the command line asks for; a usage error for a malformed value."""
        paths = frozenset(repositories)
        for path in sorted(paths):
            namespace, _, name = path.partition("/")
            if not (namespace and name):
                raise ConfigError(f"invalid --repository {path!r}: expected NAMESPACE/REPOSITORY")
        return cls(None if since is None else parse_since(since), paths, frozenset(digests))

    def matches(self, event: CloudEvent, removal: Removal) -> bool:
        if self.since is not None and event.time < self.since:
            return False
        if self.repositories and not (
            isinstance(removal, RepositoryRemoval) and removal.repository_path in self.repositories
        ):
            return False
        return not self.digests or bool(_digests(removal) & self.digests)


def _digests(removal: Removal) -> set[str]:
    """The digests a removal names: a blob's, a manifest's (OCI or pre-OCI), or a tag's
    manifest."""
    if isinstance(removal, BlobRemoved | ManifestRemoved | LegacyManifestRemoved):
        return {removal.digest}
    if isinstance(removal, TagRemoved):
        return {removal.manifest_digest}
    return set()


@dataclass(frozen=True)
class Cause:
    """What a removal names as its cause: a request (its CloudEvents type, id, key and
    time), or a run of one of the collector's commands (`collector collect`, `collector
    scan`: no repository, no time)."""

    type: str
    id: str
    repository: str | None = None
    time: datetime | None = None


@dataclass(frozen=True)
class Entry:
    event: CloudEvent
    removal: Removal
    causation_id: str | None
    cause: Cause | None


@dataclass
class AuditReport:
    entries: list[Entry] = field(default_factory=list)
    #: Extra copies seen of a reported event, by id.
    duplicates: Counter[str] = field(default_factory=Counter)
    #: Valid CloudEvents of a type that is not a removal.
    other: int = 0
    #: Records that are not a CloudEvent, or not a valid removal.
    invalid: int = 0

    def by_type(self) -> dict[str, int]:
        return dict(sorted(Counter(entry.event.type for entry in self.entries).items()))

    def unknown(self) -> list[Entry]:
        return [entry for entry in self.entries if entry.cause is None]


async def audit(settings: Settings, query: Query) -> AuditReport:
    """Replay the removals and requests topics and build the report."""
    removals, requests = await asyncio.gather(
        replay(settings, settings.topic_removals, since=query.since),
        replay(settings, settings.topic_requests),
    )
    return build_report(removals, requests, query)


def build_report(
    removals: Iterable[Record], requests: Iterable[Record], query: Query
) -> AuditReport:
    """The report of the removal records that match ``query``, each linked to its request."""
    causes = _causes(requests)
    report = AuditReport()
    # Every id met so far, and whether its first copy was reported.
    reported: dict[str, bool] = {}
    for record in removals:
        try:
            event = decode_event(record.value)
            removal = removal_of(event)
        except InvalidRecord:
            report.invalid += 1
            continue
        if removal is None:
            report.other += 1
            continue
        if event.id in reported:
            if reported[event.id]:
                report.duplicates[event.id] += 1
            continue
        reported[event.id] = query.matches(event, removal)
        if reported[event.id]:
            cause_id = causation_id(event)
            report.entries.append(Entry(event, removal, cause_id, _cause(cause_id, causes)))
    report.entries.sort(key=lambda entry: (entry.event.time, entry.event.id))
    return report


def _cause(cause_id: str | None, requests: dict[str, Cause]) -> Cause | None:
    """The request with that id, else the command run that minted it, else unknown."""
    if cause_id is None:
        return None
    if (request := requests.get(cause_id)) is not None:
        return request
    command = command_of(cause_id)
    return None if command is None else Cause(f"collector {command}", cause_id)


def _causes(requests: Iterable[Record]) -> dict[str, Cause]:
    """The valid requests by event id, first copy kept (refused ones caused nothing)."""
    causes: dict[str, Cause] = {}
    for record in requests:
        try:
            request = decode_request(key=record.key, value=record.value, headers=record.headers)
        except DecodeError:
            continue
        event = request.event
        causes.setdefault(event.id, Cause(event.type, event.id, request.key, event.time))
    return causes


# -- output --------------------------------------------------------------------


def _time(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _short(event_type: str) -> str:
    return event_type.removeprefix(TYPE_PREFIX)


def text_lines(report: AuditReport) -> Iterator[str]:
    """One line per removal (time, type, subject, cause), then the summary."""
    for entry in report.entries:
        event, cause = entry.event, entry.cause
        named = f"{_short(cause.type)} {cause.id}" if cause else "unknown"
        subject = event.subject or entry.removal.subject
        yield f"{_time(event.time)} {_short(event.type)} {subject} cause: {named}"
    summary = _summary(report)
    counts = ", ".join(f"{_short(kind)} {count}" for kind, count in summary["by_type"].items())
    yield f"removals: {summary['removals']}" + (f" ({counts})" if counts else "")
    duplicates = summary["duplicates"]
    yield f"duplicates: {duplicates['count']}" + (
        f" ({', '.join(duplicates['ids'])})" if duplicates["ids"] else ""
    )
    unknown = summary["unknown_cause"]
    causes = [f"{cid} ({count})" for cid, count in unknown["causation_ids"].items()]
    if unknown["without_causationid"]:
        causes.append(f"no causationid ({unknown['without_causationid']})")
    yield f"unknown cause: {unknown['count']}" + (f" ({', '.join(causes)})" if causes else "")
    yield f"other events: {summary['other_events']}"
    yield f"invalid records: {summary['invalid_records']}"


def json_lines(report: AuditReport) -> Iterator[str]:
    """One JSON object per removal, then one ``{"summary": …}`` object."""
    for entry in report.entries:
        event, cause = entry.event, entry.cause
        yield json.dumps(
            {
                "id": event.id,
                "time": _time(event.time),
                "type": event.type,
                "subject": event.subject or entry.removal.subject,
                "data": event.data,
                "causationid": entry.causation_id,
                "cause": None
                if cause is None
                else {
                    "type": cause.type,
                    "id": cause.id,
                    "repository": cause.repository,
                    "time": None if cause.time is None else _time(cause.time),
                },
            }
        )
    yield json.dumps({"summary": _summary(report)})


def _summary(report: AuditReport) -> dict[str, Any]:
    unknown = report.unknown()
    by_causation = Counter(entry.causation_id for entry in unknown if entry.causation_id)
    return {
        "removals": len(report.entries),
        "by_type": report.by_type(),
        "duplicates": {
            "count": sum(report.duplicates.values()),
            "ids": sorted(report.duplicates),
        },
        "unknown_cause": {
            "count": len(unknown),
            "causation_ids": dict(sorted(by_causation.items())),
            "without_causationid": sum(1 for entry in unknown if entry.causation_id is None),
        },
        "other_events": report.other,
        "invalid_records": report.invalid,
    }
