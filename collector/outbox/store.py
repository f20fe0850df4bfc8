"""Writes removal events to ``gc.outbox`` inside the deleting transaction."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

from collector.db.connector import Connection
from collector.db.queries import load_queries
from collector.engine.context import Removed
from events import removal_event

_QUERIES = load_queries("outbox.sql")


async def write(conn: Connection, removed: Sequence[Removed], time: datetime) -> None:
    if not removed:
        return
    events = [removal_event(r.removal, causation_id=r.causation_id, time=time) for r in removed]
    await conn.execute(
        _QUERIES["insert"],
        [uuid.UUID(event.id) for event in events],
        [event.type for event in events],
        [r.removal.partition_key for r in removed],
        [event.to_json() for event in events],
    )
