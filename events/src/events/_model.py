"""What every event payload shares: strict, frozen models, and the repository they name."""

from __future__ import annotations

from typing import Annotated, ClassVar

from pydantic import BaseModel, ConfigDict, Field

TYPE_PREFIX = "registry.gc."

#: Text a PostgreSQL column can hold: JSON can carry "\u0000", a text column cannot.
NO_NUL = r"^[^\x00]*$"
#: A non-empty string without NUL, of a sane length; nothing else (no number, no
#: null) is turned into one.
Name = Annotated[str, Field(strict=True, min_length=1, max_length=1024, pattern=NO_NUL)]
#: An integer of PostgreSQL's `bigint` range; a bool, float or numeric string is refused.
BigInt = Annotated[int, Field(strict=True, ge=-(2**63), le=2**63 - 1)]

#: What the fields naming a repository mean, in every event that has them.
NAMESPACE = "The name of the repository's namespace (`namespace.name`)."
REPOSITORY = "The repository's name within its namespace (`repository.name`)."
REPOSITORY_ID = "The repository's id (`repository.id`)."


class EventData(BaseModel):
    """The `data` of an event; subclasses pin the CloudEvents `type`.

    Validation is strict: `"12"` is not 12, `true` is not 1, and a field the
    contract does not name is refused.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    event_type: ClassVar[str]


class RepositoryScoped(EventData):
    """Data about one repository, keyed `<namespace>/<repository>` on Kafka (docs/events.md).

    The names are whatever the registry's rows hold, an empty one included: a
    removal describes the row it removed. Requests, which come from outside,
    narrow them (see ``RequestData``).
    """

    namespace: str = Field(description=NAMESPACE)
    repository: str = Field(description=REPOSITORY)
    repository_id: int = Field(description=REPOSITORY_ID)

    @property
    def repository_path(self) -> str:
        return f"{self.namespace}/{self.repository}"
