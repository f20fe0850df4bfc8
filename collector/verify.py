"""`collector verify`: the registry's integrity, and the garbage not yet collected."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from collector.clock import ms_to_datetime
from collector.db.connector import Connection
from collector.db.queries import load_queries

_QUERIES = load_queries("verify.sql")


@dataclass(frozen=True)
class Finding:
    what: str  # a reference like "tag.manifest_id", or a kind of garbage
    rows: int
    sample: list[int]


@dataclass(frozen=True)
class Verification:
    dangling: list[Finding] = field(default_factory=list)
    #: Due now: the next collection or orphan sweep removes it.
    garbage: list[Finding] = field(default_factory=list)
    #: Work already waiting: candidates and requests.
    queued: list[Finding] = field(default_factory=list)
    #: Unreferenced, but younger than the orphan grace period.
    grace: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No dangling reference (garbage waiting to be collected is not a failure)."""
        return not self.dangling


async def verify(
    conn: Connection, *, now_ms: int, protected_digests: list[str], orphan_grace_s: float
) -> Verification:
    now = ms_to_datetime(now_ms)
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        dangling = await conn.fetch(_QUERIES["dangling"])
        garbage = await conn.fetch(
            _QUERIES["garbage"],
            now_ms,
            now,
            protected_digests,
            now - timedelta(seconds=orphan_grace_s),
        )
    by_status: dict[str, list[Finding]] = {"due": [], "queued": [], "grace": []}
    for row in garbage:
        by_status[row["status"]].append(Finding(row["kind"], row["rows"], list(row["sample"])))
    return Verification(
        dangling=[Finding(row["reference"], row["rows"], list(row["sample"])) for row in dangling],
        garbage=by_status["due"],
        queued=by_status["queued"],
        grace=by_status["grace"],
    )
