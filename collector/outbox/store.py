"""The outbox table: events written inside the deleting transaction, counted, pruned."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from collector.db.connector import Connection
from collector.db.queries import load_queries
from events import Removal, removal_event

_QUERIES = load_queries("outbox.sql")


@dataclass(frozen=True)
class Removed:
    """One committed removal and the request that caused it: what the outbox publishes."""

    removal: Removal
    causation_id: str


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
        [r.causation_id for r in removed],
    )


async def pending(conn: Connection, *, through: int | None = None) -> int:
    """How many events still wait for the relay (of those up to outbox id ``through``)."""
    count: int = await conn.fetchval(_QUERIES["count_pending"], through)
    return count


async def oldest_pending_age(conn: Connection) -> float:
    """Seconds the oldest event still waiting for the relay has waited (0: none)."""
    age: float = await conn.fetchval(_QUERIES["oldest_pending_age"])
    return age


async def caused_by(conn: Connection, causation_id: str, *, after: int) -> int:
    """How many events the request (or command run) ``causation_id`` caused, among those
    after outbox id ``after``: what committed, whether or not its caller saw the commit."""
    count: int = await conn.fetchval(_QUERIES["count_caused_by"], causation_id, after)
    return count


async def last_id(conn: Connection) -> int:
    """The outbox id of the newest event: a watermark for :func:`pending`."""
    newest: int = await conn.fetchval(_QUERIES["last_id"])
    return newest


async def prune(conn: Connection, retention: timedelta) -> int:
    """Delete events published longer than ``retention`` ago; return how many went."""
    count: int = await conn.fetchval(_QUERIES["prune"], retention)
    return count
