"""Requests for work, put on the requests topic: `collector publish` and `collector scan`.

Ids come from the database, so an operator names things the way users see
them (``acme/web``, tag ``v1``); the collector re-checks every request
against the database anyway (CONTRACT §2.1).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import structlog
from pydantic import ValidationError

from collector import kafka
from collector.clock import ms_to_datetime
from collector.config import Settings
from collector.db.connector import Connection
from collector.db.queries import load_queries
from collector.engine import find_repository
from collector.errors import ConfigError
from events import (
    CloudEvent,
    LegacyTagExpired,
    RepoDeleted,
    RepoSweep,
    RequestData,
    TagExpired,
    describe_invalid,
    request_event,
    to_record,
)

log = structlog.get_logger(__name__)

_QUERIES = load_queries("requests.sql")

_R = TypeVar("_R", bound=RequestData)

#: The CloudEvents `source` of requests the collector's own commands publish.
SOURCE = "/registry-gc/cli"


async def tag_expired(conn: Connection, path: str, tag: str) -> TagExpired:
    """The request for the latest ended tag of that name; a usage error if none ended."""
    repo = await find_repository(conn, path)
    row = await conn.fetchrow(_QUERIES["latest_expired_tag"], repo.namespace, repo.name, tag)
    if row is None:
        raise ConfigError(f"no ended tag {path}:{tag} (only expired tags can be requested)")
    return _request(
        TagExpired,
        namespace=repo.namespace,
        repository=repo.name,
        repository_id=repo.id,
        tag=tag,
        tag_id=row["id"],
        lifetime_end_ms=row["lifetime_end_ms"],
    )


async def legacy_tag_expired(conn: Connection, path: str, tag: str) -> LegacyTagExpired:
    """The request for the latest ended pre-OCI tag of that name; a usage error if none
    ended."""
    repo = await find_repository(conn, path)
    row = await conn.fetchrow(_QUERIES["latest_expired_legacy_tag"], repo.namespace, repo.name, tag)
    if row is None:
        raise ConfigError(f"no ended pre-OCI tag {path}:{tag} (only expired tags can be requested)")
    return _request(
        LegacyTagExpired,
        namespace=repo.namespace,
        repository=repo.name,
        repository_id=repo.id,
        tag=tag,
        repository_tag_id=row["id"],
        lifetime_end_ts=row["lifetime_end_ts"],
    )


async def repo_deleted(conn: Connection, path: str) -> RepoDeleted:
    repo = await find_repository(conn, path)
    return _request(
        RepoDeleted, namespace=repo.namespace, repository=repo.name, repository_id=repo.id
    )


async def repo_sweep(conn: Connection, path: str) -> RepoSweep:
    repo = await find_repository(conn, path)
    return _request(
        RepoSweep, namespace=repo.namespace, repository=repo.name, repository_id=repo.id
    )


@dataclass(frozen=True)
class Unrequestable:
    """A repository with work whose row cannot be named in a request (an empty name, or
    one longer than a request carries): only ``collector collect`` reaches it."""

    repository_id: int
    reason: str


@dataclass(frozen=True)
class Scan:
    requests: list[RequestData] = field(default_factory=list)
    unrequestable: list[Unrequestable] = field(default_factory=list)


async def scan(conn: Connection, now_ms: int) -> Scan:
    """A request for every repository with work that no event may have announced:
    repo-deleted for those marked for deletion, repo-sweep for those with due tags,
    expired uploads or pending candidates."""
    found = Scan()
    for row in await conn.fetch(_QUERIES["repositories_to_sweep"], now_ms, ms_to_datetime(now_ms)):
        try:
            request = (RepoDeleted if row["marked"] else RepoSweep)(
                namespace=row["namespace"], repository=row["name"], repository_id=row["id"]
            )
        except ValidationError as exc:
            found.unrequestable.append(Unrequestable(row["id"], describe_invalid(exc)))
            continue
        found.requests.append(request)
    return found


async def publish(settings: Settings, requests: Sequence[RequestData]) -> list[CloudEvent]:
    """Put the requests on the requests topic, keyed by repository; returns the events
    once the broker acknowledged every one."""
    events = [request_event(request, source=SOURCE) for request in requests]
    records = [
        (request.repository_path.encode(), *to_record(event))
        for request, event in zip(requests, events, strict=True)
    ]
    await kafka.send_all(settings, settings.topic_requests, records)
    for event in events:
        log.info("request_published", event_id=event.id, type=event.type)
    return events


def _request(model: type[_R], **fields: Any) -> _R:
    """The request naming those registry rows, or a usage error saying why none can."""
    try:
        return model(**fields)
    except ValidationError as exc:
        raise ConfigError(
            f"repository {fields['repository_id']} cannot be named in a request:"
            f" {describe_invalid(exc)}; `collector collect` reaches it"
        ) from exc
