"""The plan: what a collection would remove now and within a horizon, and the bytes it
would free, without removing anything.

It decides with the collectors' own rules (``gc.due_tags``, ``gc.holders``,
``gc.collectable_blobs``, ...; ``plan.sql``) to the same fixpoint, in one read-only
snapshot: it takes no row lock, so a push never waits on it, and it sees one
consistent registry however long it runs. Set-based: one statement per round of
the fixpoint, whatever the number of objects.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import structlog

from collector.clock import ms_to_datetime
from collector.db.connector import Connection
from collector.db.queries import load_queries
from events import (
    BlobRemoved,
    LabelRemoved,
    LegacyImageRemoved,
    LegacyManifestRemoved,
    LegacyTagRemoved,
    ManifestRemoved,
    RepoPurged,
    TagRemoved,
)

log = structlog.get_logger(__name__)

_QUERIES = load_queries("plan.sql")

#: The removal event each kind of doomed object would be reported by (an upload is
#: removed without one).
EVENT_OF_KIND = {
    "tag": TagRemoved.event_type,
    "legacy_tag": LegacyTagRemoved.event_type,
    "tag_manifest": LegacyManifestRemoved.event_type,
    "manifest": ManifestRemoved.event_type,
    "label": LabelRemoved.event_type,
    "image": LegacyImageRemoved.event_type,
    "blob": BlobRemoved.event_type,
}


@dataclass(frozen=True)
class PlanScope:
    """The repositories a plan is for: of ``namespace``, among ``repository_ids``, or
    (neither) the whole registry; a marked one counts as purged when ``purge``."""

    namespace: str | None = None
    repository_ids: tuple[int, ...] | None = None
    purge: bool = True

    @property
    def whole_registry(self) -> bool:
        return self.namespace is None and self.repository_ids is None


@dataclass(frozen=True)
class Share:
    objects: int = 0
    bytes: int = 0

    def __add__(self, other: Share) -> Share:
        return Share(self.objects + other.objects, self.bytes + other.bytes)


@dataclass
class Due:
    """What a collection at one time would remove: removals by event type (what its
    report and its events would count), the bytes of the blobs, the uploads (removed
    without an event), and each repository's share."""

    removed: Counter[str] = field(default_factory=Counter)
    bytes: int = 0
    uploads: int = 0
    by_repository: dict[int | None, Share] = field(default_factory=dict)
    rounds: int = 0

    @property
    def total(self) -> int:
        return sum(self.removed.values())


@dataclass(frozen=True)
class DueBlob:
    digest: str
    size: int | None
    repository_id: int | None


@dataclass(frozen=True)
class OldestDue:
    kind: str
    name: str
    repository_id: int
    due_at_ms: int


@dataclass(frozen=True)
class KeptBlob:
    digest: str
    size: int | None
    protected: bool  # else a placeholder: no placement


@dataclass(frozen=True)
class Protected:
    """What the rules keep that would otherwise go: immutable tags past their window,
    and blobs nothing would hold any more that are placeholders or protected."""

    immutable_tags: int = 0
    immutable_examples: tuple[tuple[str, int], ...] = ()
    blobs: tuple[KeptBlob, ...] = ()


@dataclass(frozen=True)
class Plan:
    at_ms: int
    horizon_s: int
    now: Due
    #: Everything due by ``at_ms + horizon_s`` (what is due now included).
    by_horizon: Due
    largest: tuple[DueBlob, ...]
    oldest_due: OldestDue | None
    protected: Protected
    #: Repository id -> ``namespace/name`` for every repository named above.
    paths: dict[int, str]


async def plan(
    conn: Connection,
    scope: PlanScope,
    *,
    now_ms: int,
    horizon_s: int,
    protected_digests: Sequence[str],
    top: int = 10,
) -> Plan:
    """Plan for ``scope`` at ``now_ms`` and ``horizon_s`` later, in one snapshot."""
    await conn.execute(_QUERIES["create_tables"])
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        await conn.execute(_QUERIES["settings"])
        await conn.execute(
            _QUERIES["scope"],
            scope.namespace,
            None if scope.repository_ids is None else list(scope.repository_ids),
            scope.purge,
        )
        later = None
        if horizon_s:
            later = await _due(conn, scope, now_ms + horizon_s * 1000, protected_digests)
            await conn.execute(_QUERIES["reset"])
        # Now last: what the working tables hold is read for the details below.
        now = await _due(conn, scope, now_ms, protected_digests)
        later = later or now
        largest = tuple(DueBlob(**dict(row)) for row in await conn.fetch(_QUERIES["largest"], top))
        oldest = await conn.fetchrow(_QUERIES["oldest_due"], now_ms)
        immutable = await conn.fetch(_QUERIES["immutable"], now_ms, top)
        kept = await conn.fetch(_QUERIES["kept_blobs"])
        named = (
            set(later.by_repository)
            | set(now.by_repository)
            | {blob.repository_id for blob in largest}
            | {row["repository_id"] for row in immutable}
            | ({oldest["repository_id"]} if oldest else set())
        )
        paths = {
            row["id"]: f"{row['namespace']}/{row['name']}"
            for row in await conn.fetch(
                _QUERIES["repositories"], [id_ for id_ in named if id_ is not None]
            )
        }
    return Plan(
        at_ms=now_ms,
        horizon_s=horizon_s,
        now=now,
        by_horizon=later,
        largest=largest,
        oldest_due=OldestDue(**dict(oldest)) if oldest else None,
        protected=Protected(
            immutable_tags=immutable[0]["total"] if immutable else 0,
            immutable_examples=tuple((row["name"], row["repository_id"]) for row in immutable),
            blobs=tuple(KeptBlob(**dict(row)) for row in kept),
        ),
        paths=paths,
    )


async def _due(
    conn: Connection, scope: PlanScope, at_ms: int, protected_digests: Sequence[str]
) -> Due:
    """The fixpoint at ``at_ms``: the roots, then a round per level of what they hold,
    until a round dooms nothing."""
    at_time = ms_to_datetime(at_ms)
    await conn.execute(_QUERIES["roots"], at_ms, at_time)
    await conn.execute(_QUERIES["tag_manifests"])
    await conn.execute(_QUERIES["first_frontier"], scope.whole_registry)
    await conn.execute(_QUERIES["frontier"], at_time, 0)
    due = Due()
    while True:
        due.rounds += 1
        doomed = await conn.fetchval(
            _QUERIES["decide"], at_time, list(protected_digests), due.rounds
        )
        log.debug("plan_round", round=due.rounds, doomed=doomed)
        await conn.execute(_QUERIES["next_frontier"])
        if not doomed:
            break
        await conn.execute(_QUERIES["frontier"], at_time, due.rounds)
    for row in await conn.fetch(_QUERIES["totals"]):
        if row["kind"] == "upload":
            due.uploads += row["objects"]
            continue
        share = Share(row["objects"], int(row["bytes"]))
        due.removed[EVENT_OF_KIND[row["kind"]]] += share.objects
        due.bytes += share.bytes
        repository_id = row["repository_id"]
        due.by_repository[repository_id] = due.by_repository.get(repository_id, Share()) + share
    for row in await conn.fetch(_QUERIES["purged"]):
        due.removed[RepoPurged.event_type] += 1
        repository_id = row["repository_id"]
        due.by_repository[repository_id] = due.by_repository.get(repository_id, Share()) + Share(
            1, 0
        )
    return due
