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


async def claim(
    conn: Connection, scope: Scope, kind: str, limit: int, *, shares: int = 1, share: int = 0
) -> Batch:
    """Up to ``limit`` candidates of ``kind`` of the repositories in scope, of share
    ``share`` of ``shares`` (object id modulo ``shares``): claims of different shares
    running side by side never hold the same object."""
    match scope:
        case Purge(repository_id):
            rows = await conn.fetch(
                _QUERIES["claim_in"], [repository_id], kind, limit, shares, share
            )
        case Repositories():
            rows = await conn.fetch(_QUERIES["claim_in"], scope.ids, kind, limit, shares, share)
        case WholeRegistry():
            rows = await conn.fetch(_QUERIES["claim_any"], kind, limit, shares, share)
    batch: Batch = {}
    for row in rows:
        batch.setdefault(row["object_id"], row["causation_id"])
    return batch


async def pending(conn: Connection, scope: Scope, most: int) -> dict[str, int]:
    """Kind -> how many candidates wait in the repositories in scope, counted up to
    ``most``; kinds with none are left out."""
    match scope:
        case Purge(repository_id):
            rows = await conn.fetch(_QUERIES["pending_in"], [repository_id], most)
        case Repositories():
            rows = await conn.fetch(_QUERIES["pending_in"], scope.ids, most)
        case WholeRegistry():
            rows = await conn.fetch(_QUERIES["pending_any"], most)
    return {row["kind"]: row["waiting"] for row in rows}


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
