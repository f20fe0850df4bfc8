"""Labels: shared rows that go when no manifest carries them."""

from __future__ import annotations

from collector.db.connector import Connection
from collector.db.queries import load_queries
from collector.engine.candidates import Batch
from collector.outbox.store import Removed
from events import LabelRemoved

_QUERIES = load_queries("labels.sql")


class LabelCollector:
    kind = "label"

    async def collect(self, conn: Connection, batch: Batch, now_ms: int) -> list[Removed]:
        ids = sorted(batch)
        await conn.execute(_QUERIES["lock"], ids)
        garbage = [row["id"] for row in await conn.fetch(_QUERIES["unreferenced"], ids)]
        if not garbage:
            return []
        rows = await conn.fetch(_QUERIES["delete"], garbage, [batch[i] for i in garbage])
        return [
            Removed(LabelRemoved(label_id=row["id"], key=row["key"]), row["causation_id"])
            for row in rows
        ]
