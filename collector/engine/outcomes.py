"""What a request asks of the engine, and how it ends.

One vocabulary for the engine, which says how each request it collected for ended,
the workers, which store that outcome in ``gc.request.outcome``, and the metrics and
logs, which count and name it (``registry_gc_requests_finished_total{outcome}``,
``request_finished outcome=``).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from events import LegacyTagRemoved, Removal, TagRemoved


class Finished(enum.StrEnum):
    """How a request ended: stored in ``gc.request.outcome``, counted by outcome in
    ``registry_gc_requests_finished_total`` and logged, under these names."""

    COLLECTED = "collected"
    PURGED = "purged"
    #: The tag was collected, deleted, restored or re-expired since the request.
    STALE = "stale"
    IMMUTABLE = "immutable"
    #: The repository to purge is gone already.
    GONE = "gone"
    NOT_MARKED = "not-marked"
    #: Handling it failed for a reason waiting will not change (dead-lettered).
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Deferred:
    """Not finished: to be looked at again at ``due_at_ms``."""

    due_at_ms: int
    why: str


Outcome = Finished | Deferred


@dataclass(frozen=True, slots=True)
class ExpiredTag:
    """The tag whose expiry a request announced: an OCI ``tag`` row, or (``legacy``) a
    pre-OCI ``repository_tag`` row."""

    id: int
    legacy: bool = False

    @classmethod
    def removed_by(cls, removal: Removal) -> ExpiredTag | None:
        """The tag ``removal`` reports removed; None for a removal of anything else."""
        match removal:
            case TagRemoved(tag_id=tag_id):
                return cls(tag_id)
            case LegacyTagRemoved(repository_tag_id=tag_id):
                return cls(tag_id, legacy=True)
            case _:
                return None


@dataclass(frozen=True, slots=True)
class Cause:
    """A request the engine collects a repository for: what the collection removes there
    names ``causation_id``. A request announcing a tag's expiry (``tag``) is collected
    once that tag is removed; any other, once its repository is collected."""

    repository_id: int
    causation_id: str
    tag: ExpiredTag | None = None
