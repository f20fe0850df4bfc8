"""Manifests, manifest lists and OCI referrers."""

from __future__ import annotations

from collector.db.connector import Connection
from collector.db.queries import load_queries
from collector.engine.candidates import Batch
from collector.engine.context import Purge
from collector.outbox.store import Removed
from events import ManifestRemoved

_QUERIES = load_queries("manifests.sql")


class ManifestCollector:
    kind = "manifest"

    async def collect(self, conn: Connection, batch: Batch, now_ms: int) -> list[Removed]:
        ids = sorted(batch)
        await conn.execute(_QUERIES["lock"], ids)
        garbage = [row["id"] for row in await conn.fetch(_QUERIES["unreferenced"], ids)]
        if not garbage:
            return []
        rows = await conn.fetch(_QUERIES["delete"], garbage, [batch[i] for i in garbage])
        return [
            Removed(
                ManifestRemoved(
                    namespace=row["namespace"],
                    repository=row["repository"],
                    repository_id=row["repository_id"],
                    manifest_id=row["id"],
                    digest=row["digest"],
                    media_type=row["media_type"],
                ),
                row["causation_id"],
            )
            for row in rows
        ]


async def queue_all(conn: Connection, purge: Purge) -> None:
    """Make every manifest of the repository a candidate (purge)."""
    await conn.execute(_QUERIES["queue_all"], purge.repository_id, purge.causation_id)
