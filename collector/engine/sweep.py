"""The orphan sweep: garbage that no event announced.

A registry that crashed between writes, rows left by an older collector, a
restore from backup: such objects are referenced by nothing, yet no tag
expiry or purge ever leads to them. The sweep finds them by the very rules
the collectors apply (``gc.unreferenced_objects``, migration 0010), once they
are older than the grace period (a registry writes an upload in several
transactions; the sweep must never race one), and queues them as candidates.
From there they go through the same locks, re-checks, outbox events and
crash safety as everything else.

A registry-wide sweep walks each table in id ranges, one transaction per
range, and keeps its place in ``gc.sweep``: a sweep cut short resumes where
it stopped, and sweeps running at once share the pass. Nothing is read into
memory: each range is one ``INSERT … SELECT``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from collector.db.connector import Connection
from collector.db.queries import load_queries

_QUERIES = load_queries("sweep.sql")

#: Manifests first: collecting them frees labels, images and blobs through the
#: ordinary candidates, so the later tables' passes find fewer orphans.
KINDS = ("manifest", "image", "label", "blob")


@dataclass(frozen=True)
class Judgement:
    """What one sweep judges by."""

    #: Objects created after this are in their grace period.
    cutoff: datetime
    #: Uploads expired by then keep nothing alive.
    now: datetime
    protected_digests: list[str]

    @classmethod
    def at(cls, now: datetime, *, grace_s: float, protected_digests: list[str]) -> Judgement:
        return cls(now - timedelta(seconds=grace_s), now, protected_digests)


@dataclass(frozen=True)
class Step:
    scanned: int  # rows judged
    queued: int  # orphans queued as candidates
    done: bool = False  # the pass over this table is complete


async def step(
    conn: Connection, *, kind: str, judgement: Judgement, span: int, causation_id: str
) -> Step:
    """Judge the next ``span`` ids of the table of ``kind``, in this transaction."""
    place = await conn.fetchrow(_QUERIES["place"], kind)
    assert place is not None  # an upsert returns its row
    if place["until_id"] is None:
        place = await conn.fetchrow(_QUERIES["start_pass"], kind)
        assert place is not None
    after, until = place["last_id"], place["until_id"]
    if after >= until:
        await conn.execute(_QUERIES["finish_pass"], kind)
        return Step(scanned=0, queued=0, done=True)
    row = await conn.fetchrow(
        _QUERIES["queue_range"],
        kind,
        after,
        min(after + span, until),
        judgement.cutoff,
        judgement.now,
        judgement.protected_digests,
        causation_id,
    )
    assert row is not None  # an aggregate: always one row
    return Step(scanned=row["scanned"], queued=row["queued"])


async def queue_in(conn: Connection, *, causes: dict[int, str], judgement: Judgement) -> Step:
    """Queue the orphan manifests and legacy images of these repositories
    (repository id -> causation id), each under its repository's request."""
    row = await conn.fetchrow(
        _QUERIES["queue_in"],
        list(causes),
        list(causes.values()),
        judgement.cutoff,
        judgement.now,
        judgement.protected_digests,
    )
    assert row is not None  # an aggregate: always one row
    return Step(scanned=row["scanned"], queued=row["queued"], done=True)


async def is_due(conn: Connection, every: timedelta) -> bool:
    """Whether a registry-wide sweep is due at a cadence of ``every``."""
    due: bool = await conn.fetchval(_QUERIES["due"], every, len(KINDS))
    return due
