"""Uploaded blobs: an upload keeps its blob alive until it expires (purge: all go)."""

from __future__ import annotations

from collector.clock import ms_to_datetime
from collector.db.connector import Connection
from collector.db.queries import load_queries
from collector.engine.context import Mode, RepositoryContext, StepResult

_QUERIES = load_queries("uploads.sql")


async def collect_batch(
    conn: Connection, ctx: RepositoryContext, *, now_ms: int, limit: int
) -> StepResult:
    """Remove one batch of expired uploads and queue their blobs (no event: not an object)."""
    count: int = await conn.fetchval(
        _QUERIES["delete_expired"],
        ctx.repository_ids,
        ms_to_datetime(now_ms),
        limit,
        ctx.mode is Mode.PURGE,
        ctx.causation_ids(),
    )
    return StepResult(claimed=count)
