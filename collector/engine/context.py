"""What a collection runs with and what it produces."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

from collector.config import Settings
from collector.engine.outcomes import Outcome
from collector.outbox.store import Removed
from events import BlobRemoved


@dataclass(frozen=True)
class Purge:
    """Everything in one repository marked for deletion (every tag, whatever its
    state), for one request."""

    repository_id: int
    causation_id: str

    def causation_of(self, repository_id: int) -> str:
        return self.causation_id


@dataclass(frozen=True)
class Repositories:
    """What is due in several repositories (or one), each for the request naming it:
    ``causes`` maps each repository's id to its causation id, in id order.

    The durable part of the collection (the candidates still to decide) lives in
    ``gc.candidate`` under each repository's id; this object only names them. Their
    candidates are decided in full batches, however few objects each holds.
    """

    causes: Mapping[int, str]

    @classmethod
    def of(cls, causes: Mapping[int, str]) -> Repositories:
        if not causes:
            raise ValueError("a collection of several repositories needs one at least")
        return cls(dict(sorted(causes.items())))

    @property
    def ids(self) -> list[int]:
        return list(self.causes)

    def causation_of(self, repository_id: int) -> str:
        """The request whose collection removes what ``repository_id`` holds."""
        return self.causes[repository_id]


@dataclass(frozen=True)
class WholeRegistry:
    """What is due in every repository, for one request (a registry-wide run): batches
    span repositories."""

    causation_id: str

    def causation_of(self, repository_id: int) -> str:
        return self.causation_id


#: What one collection covers, and so which queries it runs: a purge of one
#: repository, what is due in some repositories, or what is due anywhere.
Scope = Purge | Repositories | WholeRegistry


@dataclass(frozen=True)
class StepResult:
    #: Objects taken up for decision: a drain or the fixpoint ends when a step makes none.
    progress: int
    removed: list[Removed] = field(default_factory=list)
    #: Whether the step, run again now, may find more: False once it took less than a
    #: full batch (the rest is held by other transactions, and a drain ends there as
    #: it would on the empty step after it).
    more: bool = True


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
    """What a run removed, by event type, and the bytes it freed; how each request it
    ran for ended."""

    removed: Counter[str] = field(default_factory=Counter)
    bytes_freed: int = 0
    repositories: int = 0
    incomplete: list[int] = field(default_factory=list)  # purges that left rows behind
    sweep: SweepTotals = field(default_factory=SweepTotals)
    #: Repository id -> how the request it was collected or purged for ended (a
    #: registry-wide run is for no request of the queue).
    outcomes: dict[int, Outcome] = field(default_factory=dict)

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
        self.outcomes.update(other.outcomes)

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
