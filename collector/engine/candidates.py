"""Claiming and queueing candidates: the durable half of a repository context."""

from __future__ import annotations

from collections.abc import Mapping

from collector.db.connector import Connection
from collector.db.queries import load_queries

_QUERIES = load_queries("candidates.sql")

#: object id -> id of the request that made it a candidate, in claim order.
Batch = dict[int, str]


async def claim(conn: Connection, repository_id: int, kind: str, limit: int) -> Batch:
    rows = await conn.fetch(_QUERIES["claim"], repository_id, kind, limit)
    batch: Batch = {}
    for row in rows:
        batch.setdefault(row["object_id"], row["causation_id"])
    return batch


async def queue(
    conn: Connection, repository_id: int, kind: str, objects: Mapping[int, str]
) -> None:
    await conn.execute(
        _QUERIES["queue"],
        [kind] * len(objects),
        list(objects),
        list(objects.values()),
        repository_id,
    )
