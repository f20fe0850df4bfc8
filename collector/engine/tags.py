"""Tags: the roots of collection. Expired ones past their window go (purge: all)."""

from __future__ import annotations

from collections.abc import Mapping

import asyncpg

from collector.db.connector import Connection
from collector.db.queries import load_queries
from collector.engine.context import Purge, Repositories, Scope, StepResult, WholeRegistry
from collector.outbox.store import Removed
from events import TagRemoved

_QUERIES = load_queries("tags.sql")


async def lock_and_delete(
    conn: Connection,
    queries: Mapping[str, str],
    scope: Scope,
    *,
    now_ms: int,
    limit: int,
) -> tuple[list[asyncpg.Record], bool]:
    """Lock a batch of due tags in scope (a purge: any of its repository's) with
    ``lock_all``, ``lock_due_in`` or ``lock_due_any``, and remove them with ``delete``,
    which re-checks them: the deleted rows, and whether the batch was full (there
    may be more). Shared by both tag models."""
    match scope:
        case Purge(repository_id):
            locked = await conn.fetch(queries["lock_all"], repository_id, limit)
        case Repositories():
            locked = await conn.fetch(queries["lock_due_in"], scope.ids, now_ms, limit)
        case WholeRegistry():
            locked = await conn.fetch(queries["lock_due_any"], now_ms, limit)
    if not locked:
        return [], False
    deleted = await conn.fetch(
        queries["delete"],
        [row["id"] for row in locked],
        now_ms,
        isinstance(scope, Purge),
        [scope.causation_of(row["repository_id"]) for row in locked],
    )
    return deleted, len(locked) == limit


async def collect_batch(conn: Connection, scope: Scope, *, now_ms: int, limit: int) -> StepResult:
    """Remove one batch of due tags and queue their manifests."""
    rows, more = await lock_and_delete(conn, _QUERIES, scope, now_ms=now_ms, limit=limit)
    removed = [
        Removed(
            TagRemoved(
                namespace=row["namespace"],
                repository=row["repository"],
                repository_id=row["repository_id"],
                tag=row["name"],
                tag_id=row["id"],
                manifest_digest=row["manifest_digest"],
            ),
            row["causation_id"],
        )
        for row in rows
    ]
    # Progress is what was deleted, not what was locked: a tag whose re-check
    # fails (its window just grew) must not keep the drain loop spinning.
    return StepResult(progress=len(removed), removed=removed, more=more)
