"""Legacy V1 images: parent chains unwind from leaf to root, with derived storage."""

from __future__ import annotations

from collector.db.connector import Connection
from collector.db.queries import load_queries
from collector.engine import candidates
from collector.engine.candidates import Batch
from collector.engine.context import Purge
from collector.outbox.store import Removed
from events import LegacyImageRemoved

_QUERIES = load_queries("images.sql")


class ImageCollector:
    kind = "image"

    def __init__(self, chain_steps_per_transaction: int) -> None:
        self._max_steps = chain_steps_per_transaction

    async def collect(self, conn: Connection, batch: Batch, now_ms: int) -> list[Removed]:
        """Remove the garbage images, then their parents as they become garbage.

        Unwinding a chain inside the transaction saves a fixpoint round per
        link; past the step budget the remaining frontier is queued again.
        """
        removed: list[Removed] = []
        frontier = batch
        parents: dict[int, tuple[int, str]] = {}
        for _ in range(self._max_steps):
            if not frontier:
                return removed
            ids = sorted(frontier)
            await conn.execute(_QUERIES["lock"], ids)
            garbage = [row["id"] for row in await conn.fetch(_QUERIES["unreferenced"], ids)]
            if not garbage:
                return removed
            rows = await conn.fetch(_QUERIES["delete"], garbage, [frontier[i] for i in garbage])
            removed.extend(
                Removed(
                    LegacyImageRemoved(
                        namespace=row["namespace"],
                        repository=row["repository"],
                        repository_id=row["repository_id"],
                        image_id=row["id"],
                        docker_image_id=row["docker_image_id"],
                    ),
                    row["causation_id"],
                )
                for row in rows
            )
            parents = {
                row["parent_id"]: (row["repository_id"], row["causation_id"])
                for row in rows
                if row["parent_id"] is not None
            }
            frontier = {parent: cause for parent, (_, cause) in parents.items()}
        await candidates.queue(conn, self.kind, parents)
        return removed


async def queue_all(conn: Connection, purge: Purge) -> None:
    """Make every legacy image of the repository a candidate (purge)."""
    await conn.execute(_QUERIES["queue_all"], purge.repository_id, purge.causation_id)
