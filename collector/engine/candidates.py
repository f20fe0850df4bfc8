"""Claiming and queueing candidates: the durable half of a repository context."""

from __future__ import annotations

from collections.abc import Mapping

from collector.db.connector import Connection
from collector.db.queries import load_queries
from collector.engine.context import Purge, Repositories, Scope, WholeRegistry

_QUERIES = load_queries("candidates.sql")

#: object id -> id of the request that made it a candidate, in claim order.
Batch = dict[int, str]
#: The kinds of object a candidate may be.
KINDS = ("manifest", "label", "image", "blob")


async def claim(conn: Connection, scope: Scope, kind: str, limit: int) -> Batch:
    """Up to ``limit`` candidates of ``kind`` of the repositories in scope."""
    match scope:
        case Purge(repository_id):
            rows = await conn.fetch(_QUERIES["claim_in"], [repository_id], kind, limit)
        case Repositories():
            rows = await conn.fetch(_QUERIES["claim_in"], scope.ids, kind, limit)
        case WholeRegistry():
            rows = await conn.fetch(_QUERIES["claim_any"], kind, limit)
    batch: Batch = {}
    for row in rows:
        batch.setdefault(row["object_id"], row["causation_id"])
    return batch


async def pending_kinds(conn: Connection, scope: Scope) -> set[str]:
    """The kinds with candidates waiting in the repositories in scope."""
    match scope:
        case Purge(repository_id):
            rows = await conn.fetch(_QUERIES["pending_kinds_in"], [repository_id])
        case Repositories():
            rows = await conn.fetch(_QUERIES["pending_kinds_in"], scope.ids)
        case WholeRegistry():
            rows = await conn.fetch(_QUERIES["pending_kinds_any"])
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


async def backlog(conn: Connection) -> dict[str, tuple[int, float]]:
    """kind -> (candidates waiting, seconds the oldest has waited), for every kind."""
    waiting = {
        row["kind"]: (row["waiting"], row["oldest_s"])
        for row in await conn.fetch(_QUERIES["backlog"])
    }
    return {kind: waiting.get(kind, (0, 0.0)) for kind in KINDS}
