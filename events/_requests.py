"""The requests the collector consumes (CONTRACT §2.1): hints naming one repository."""

from __future__ import annotations

from typing import Annotated, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from events._removals import TYPE_PREFIX

#: A non-empty string; nothing else (no number, no null) is turned into one.
Name = Annotated[str, Field(strict=True, min_length=1)]
#: An integer of PostgreSQL's `bigint` range; a bool, float or numeric string is refused.
BigInt = Annotated[int, Field(strict=True, ge=-(2**63), le=2**63 - 1)]


class RequestData(BaseModel):
    """The `data` of a request event: names the repository it is about.

    Subclasses pin the CloudEvents `type`. Validation is strict: `"12"` is not
    12, `true` is not 1, and a field the contract does not name is refused.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    event_type: ClassVar[str]

    namespace: Name
    repository: Name
    repository_id: BigInt

    @property
    def repository_path(self) -> str:
        """`<namespace>/<repository>`: what the Kafka record key must be (CONTRACT §1)."""
        return f"{self.namespace}/{self.repository}"


class TagExpired(RequestData):
    """The tag's lifetime ended; collect it once it is past the namespace's window."""

    event_type: ClassVar[str] = TYPE_PREFIX + "tag-expired"

    tag: Name
    tag_id: BigInt
    lifetime_end_ms: BigInt


class RepoDeleted(RequestData):
    """The registry marked the repository for deletion; purge all of it."""

    event_type: ClassVar[str] = TYPE_PREFIX + "repo-deleted"


class RepoSweep(RequestData):
    """Collect every tag of the repository that is past its window."""

    event_type: ClassVar[str] = TYPE_PREFIX + "repo-sweep"


REQUEST_TYPES: dict[str, type[RequestData]] = {
    cls.event_type: cls for cls in (TagExpired, RepoDeleted, RepoSweep)
}
