"""Blobs: content-addressed and shared by every repository."""

from __future__ import annotations

from collector.clock import ms_to_datetime
from collector.db.connector import Connection
from collector.db.queries import load_queries
from collector.engine.candidates import Batch
from collector.outbox.store import Removed
from events import BlobRemoved

_QUERIES = load_queries("blobs.sql")


class BlobCollector:
    """Removes a blob only when nothing in any repository references it.

    The row lock taken here conflicts with the KEY SHARE lock that any
    concurrent insert of a reference takes through its foreign key: either
    that insert commits first and the re-check sees it, or this delete
    commits first and the insert fails its foreign-key check.
    """

    kind = "blob"

    def __init__(self, protected_digests: tuple[str, ...]) -> None:
        self._protected = list(protected_digests)

    async def collect(self, conn: Connection, batch: Batch, now_ms: int) -> list[Removed]:
        ids = sorted(batch)
        await conn.execute(_QUERIES["lock"], ids)
        garbage = [
            row["id"]
            for row in await conn.fetch(
                _QUERIES["unreferenced"], ids, self._protected, ms_to_datetime(now_ms)
            )
        ]
        if not garbage:
            return []
        rows = await conn.fetch(_QUERIES["delete"], garbage, [batch[i] for i in garbage])
        return [
            Removed(
                BlobRemoved(
                    blob_id=row["id"],
                    digest=row["digest"],
                    size=row["size"],
                    locations=list(row["locations"]),
                ),
                row["causation_id"],
            )
            for row in rows
        ]
