"""`collector verify`: the registry's integrity, and the garbage not yet collected."""

from __future__ import annotations

from dataclasses import dataclass, field

from collector.db.connector import Connection
from collector.db.queries import load_queries
from collector.engine.context import ms_to_datetime

_QUERIES = load_queries("verify.sql")


@dataclass(frozen=True)
class Finding:
    what: str  # a reference like "tag.manifest_id", or a kind of garbage
    rows: int
    sample: list[int]


@dataclass(frozen=True)
class Verification:
    dangling: list[Finding] = field(default_factory=list)
    garbage: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No dangling reference (garbage waiting to be collected is not a failure)."""
        return not self.dangling


async def verify(conn: Connection, *, now_ms: int, protected_digests: list[str]) -> Verification:
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        dangling = await conn.fetch(_QUERIES["dangling"])
        garbage = await conn.fetch(
            _QUERIES["garbage"], now_ms, ms_to_datetime(now_ms), protected_digests
        )
    return Verification(
        dangling=[Finding(row["reference"], row["rows"], list(row["sample"])) for row in dangling],
        garbage=[Finding(row["kind"], row["rows"], list(row["sample"])) for row in garbage],
    )
