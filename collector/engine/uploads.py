"""Uploaded blobs: an upload keeps its blob alive until it expires (purge: all go)."""

from __future__ import annotations

from collector.clock import ms_to_datetime
from collector.db.connector import Connection
from collector.db.queries import load_queries
from collector.engine.context import Purge, Repositories, Scope, StepResult, WholeRegistry

_QUERIES = load_queries("uploads.sql")


async def collect_batch(conn: Connection, scope: Scope, *, now_ms: int, limit: int) -> StepResult:
    """Remove one batch of expired uploads and queue their blobs (no event: not an object)."""
    # The repositories (NULL: every one) and, parallel to them, their causation ids.
    repository_ids: list[int] | None
    match scope:
        case Purge(repository_id, causation_id):
            repository_ids, causation_ids = [repository_id], [causation_id]
        case Repositories(causes):
            repository_ids, causation_ids = list(causes), list(causes.values())
        case WholeRegistry(causation_id):
            repository_ids, causation_ids = None, [causation_id]
    count: int = await conn.fetchval(
        _QUERIES["delete_expired"],
        repository_ids,
        ms_to_datetime(now_ms),
        limit,
        isinstance(scope, Purge),
        causation_ids,
    )
    return StepResult(progress=count, more=count == limit)
