"""The requests the collector consumes (docs/events.md): hints naming one repository."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from events._model import (
    NAMESPACE,
    REPOSITORY,
    REPOSITORY_ID,
    TYPE_PREFIX,
    BigInt,
    Name,
    RepositoryScoped,
)


class RequestData(RepositoryScoped):
    """The `data` of a request event: names the repository it is about, whose
    `repository_path` the Kafka record key must equal. A record from outside is
    bounded: names of 1 to 1024 characters, ids of PostgreSQL's bigint range."""

    namespace: Name = Field(description=NAMESPACE)
    repository: Name = Field(description=REPOSITORY)
    repository_id: BigInt = Field(description=REPOSITORY_ID)


class TagExpired(RequestData):
    """The tag's lifetime ended; collect it once it is past the namespace's window."""

    event_type: ClassVar[str] = TYPE_PREFIX + "tag-expired"

    tag: Name = Field(description="The tag's name (`tag.name`).")
    tag_id: BigInt = Field(description="The id of the tag row that ended (`tag.id`).")
    lifetime_end_ms: BigInt = Field(
        description="When the tag's lifetime ended, in milliseconds since the epoch"
        " (`tag.lifetime_end_ms`). The request acts only while the row still holds this"
        " value: a tag restored or expired again since is left to a later request."
    )


class LegacyTagExpired(RequestData):
    """A pre-OCI tag (`repository_tag`, lifetimes in seconds) ended; collect it once
    `lifetime_end_ts + removed_tag_expiration_s <= now`."""

    event_type: ClassVar[str] = TYPE_PREFIX + "legacy-tag-expired"

    tag: Name = Field(description="The pre-OCI tag's name (`repository_tag.name`).")
    repository_tag_id: BigInt = Field(
        description="The id of the pre-OCI tag row that ended (`repository_tag.id`)."
    )
    lifetime_end_ts: BigInt = Field(
        description="When the tag's lifetime ended, in seconds since the epoch"
        " (`repository_tag.lifetime_end_ts`). The request acts only while the row still"
        " holds this value."
    )


class RepoDeleted(RequestData):
    """The registry marked the repository for deletion; purge all of it."""

    event_type: ClassVar[str] = TYPE_PREFIX + "repo-deleted"


class RepoSweep(RequestData):
    """Collect every tag of the repository that is past its window, pre-OCI tags included."""

    event_type: ClassVar[str] = TYPE_PREFIX + "repo-sweep"


REQUEST_TYPES: dict[str, type[RequestData]] = {
    cls.event_type: cls for cls in (TagExpired, LegacyTagExpired, RepoDeleted, RepoSweep)
}
