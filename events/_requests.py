"""The requests the collector consumes (CONTRACT §2.1): hints naming one repository."""

from __future__ import annotations

from typing import ClassVar

from events._model import TYPE_PREFIX, BigInt, Name, RepositoryScoped


class RequestData(RepositoryScoped):
    """The `data` of a request event: names the repository it is about, whose
    `repository_path` the Kafka record key must equal. A record from outside is
    bounded: names of 1 to 1024 characters, ids of PostgreSQL's bigint range."""

    namespace: Name
    repository: Name
    repository_id: BigInt


class TagExpired(RequestData):
    """The tag's lifetime ended; collect it once it is past the namespace's window."""

    event_type: ClassVar[str] = TYPE_PREFIX + "tag-expired"

    tag: Name
    tag_id: BigInt
    lifetime_end_ms: BigInt


class LegacyTagExpired(RequestData):
    """A pre-OCI tag (`repository_tag`, lifetimes in seconds) ended; collect it once
    `lifetime_end_ts + removed_tag_expiration_s <= now`."""

    event_type: ClassVar[str] = TYPE_PREFIX + "legacy-tag-expired"

    tag: Name
    repository_tag_id: BigInt
    lifetime_end_ts: BigInt


class RepoDeleted(RequestData):
    """The registry marked the repository for deletion; purge all of it."""

    event_type: ClassVar[str] = TYPE_PREFIX + "repo-deleted"


class RepoSweep(RequestData):
    """Collect every tag of the repository that is past its window, pre-OCI tags included."""

    event_type: ClassVar[str] = TYPE_PREFIX + "repo-sweep"


REQUEST_TYPES: dict[str, type[RequestData]] = {
    cls.event_type: cls for cls in (TagExpired, LegacyTagExpired, RepoDeleted, RepoSweep)
}
