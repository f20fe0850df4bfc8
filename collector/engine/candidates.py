"""Claiming and queueing candidates: the durable half of a repository context."""

from __future__ import annotations

from collections.abc import Mapping

from collector.db.connector import Connection
from collector.db.queries import load_queries

_QUERIES = load_queries("candidates.sql")

#: object id -> id of the request that made it a candidate, in claim order.
Batch = dict[int, str]


async def claim(conn: Connection, repository_id: int | None, kind: str, limit: int) -> Batch:
    """Up to ``limit`` candidates of ``kind`` of one repository (None: of any)."""
    if repository_id is None:
        rows = await conn.fetch(_QUERIES["claim_any"], kind, limit)
    else:
        rows = await conn.fetch(_QUERIES["claim"], repository_id, kind, limit)
    batch: Batch = {}
    for row in rows:
        batch.setdefault(row["object_id"], row["causation_id"])
    return batch


async def pending_kinds(conn: Connection, repository_id: int | None) -> set[str]:
    """The kinds with candidates waiting in one repository (None: in any)."""
    if repository_id is None:
        rows = await conn.fetch(_QUERIES["pending_kinds_any"])
    else:
        rows = await conn.fetch(_QUERIES["pending_kinds"], repository_id)
    return {row["kind"] for row in rows}


async def queue(conn: Connection, kind: str, objects: Mapping[int, tuple[int, str]]) -> None:
    """Queue ``objects``: object id -> (repository id, causation id)."""
    await conn.execute(
        _QUERIES["queue"],
        kind,
        list(objects),
        [repository_id for repository_id, _ in objects.values()],
        [causation_id for _, causation_id in objects.values()],
    )
