"""What a collection runs with and what it produces."""

from __future__ import annotations

import enum
import functools
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

from collector.config import Settings
from collector.outbox.store import Removed
from events import BlobRemoved


class Mode(enum.Enum):
    COLLECT = "collect"  # what is due: tags past their window, expired uploads
    PURGE = "purge"  # everything in a repository marked for deletion


@dataclass(frozen=True)
class RepositoryContext:
    """One collection of one repository, of several (``causes``), or of all of them
    (``repository_id`` None, no ``causes``).

    The durable part of the context (the candidates still to decide) lives in
    ``gc.candidate`` under each repository's id; this object only names them. A
    context of several or all repositories decides their candidates in full
    batches, however few objects each repository holds.
    """

    repository_id: int | None
    causation_id: str
    mode: Mode = Mode.COLLECT
    #: Several repositories, each collected for its own request: (id, causation id).
    causes: tuple[tuple[int, str], ...] = ()

    @classmethod
    def of_requests(cls, causes: Mapping[int, str]) -> RepositoryContext:
        """A collection of several repositories, each for the request naming it."""
        if not causes:
            raise ValueError("a collection of several repositories needs one at least")
        pairs = tuple(sorted(causes.items()))
        return cls(None, pairs[0][1], Mode.COLLECT, pairs)

    @property
    def repository_ids(self) -> list[int] | None:
        """The repositories in scope; None for every repository."""
        if self.causes:
            return [repository_id for repository_id, _ in self.causes]
        return None if self.repository_id is None else [self.repository_id]

    def causation_of(self, repository_id: int) -> str:
        """The request whose collection removes what ``repository_id`` holds."""
        return self._causes_by_repository.get(repository_id, self.causation_id)

    @functools.cached_property
    def _causes_by_repository(self) -> dict[int, str]:
        return dict(self.causes)

    def causation_ids(self) -> list[str]:
        """Causation ids parallel to ``repository_ids`` (one when every repository)."""
        ids = self.repository_ids
        return [self.causation_id] if ids is None else [self.causation_of(i) for i in ids]

    @property
    def repository(self) -> int:
        """The repository of a per-repository context (every purge is one)."""
        if self.repository_id is None:
            raise ValueError("a registry-wide context names no single repository")
        return self.repository_id


@dataclass(frozen=True)
class StepResult:
    claimed: int  # objects taken up for decision: the fixpoint ends when none are
    removed: list[Removed] = field(default_factory=list)


@dataclass
class SweepTotals:
    """What an orphan sweep judged and queued, and how long it took."""

    scanned: int = 0
    queued: int = 0
    seconds: float = 0.0

    @property
    def rows_per_s(self) -> float:
        return self.scanned / self.seconds if self.seconds else 0.0

    def merge(self, other: SweepTotals) -> None:
        self.scanned += other.scanned
        self.queued += other.queued
        self.seconds += other.seconds


@dataclass
class Report:
    """What a run removed, by event type, and the bytes it freed."""

    removed: Counter[str] = field(default_factory=Counter)
    bytes_freed: int = 0
    repositories: int = 0
    incomplete: list[int] = field(default_factory=list)  # purges that left rows behind
    sweep: SweepTotals = field(default_factory=SweepTotals)

    def add(self, removed: Removed) -> None:
        self.removed[removed.removal.event_type] += 1
        if isinstance(removed.removal, BlobRemoved):
            self.bytes_freed += removed.removal.size

    def merge(self, other: Report) -> None:
        self.removed.update(other.removed)
        self.bytes_freed += other.bytes_freed
        self.repositories += other.repositories
        self.incomplete.extend(other.incomplete)
        self.sweep.merge(other.sweep)

    @property
    def total(self) -> int:
        return sum(self.removed.values())


@dataclass(frozen=True)
class EngineConfig:
    batch_size: int = 500
    protected_digests: tuple[str, ...] = ()
    #: Links of a legacy image chain unwound in one transaction before the
    #: rest is handed back to the candidate table.
    chain_steps_per_transaction: int = 1000
    #: The orphan sweep leaves an unreferenced object alone until it is this old.
    orphan_grace_s: float = 3600.0
    #: Ids of one table an orphan sweep judges per transaction.
    orphan_sweep_span: int = 10_000

    @classmethod
    def from_settings(cls, settings: Settings) -> EngineConfig:
        return cls(
            batch_size=settings.batch_size,
            protected_digests=tuple(settings.protected_digests),
            orphan_grace_s=settings.orphan_grace_s,
            orphan_sweep_span=settings.orphan_sweep_span,
        )
