"""The ``gc.request`` table: requests made durable by the intake, claimed by workers."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from collector.db.connector import Connection
from collector.db.queries import load_queries
from collector.engine import ExpiredTag
from events import TYPE_PREFIX, LegacyTagExpired, Request, TagExpired

_QUERIES = load_queries("work.sql")


@dataclass(frozen=True, slots=True)
class WorkItem:
    """A request as the queue keeps it; ``id`` is None until it is admitted."""

    event_id: str
    event_type: str
    repository_id: int
    repository_path: str
    tag_id: int | None = None
    lifetime_end_ms: int | None = None
    #: A legacy-tag-expired request's pre-OCI tag and its lifetime end (seconds).
    repository_tag_id: int | None = None
    lifetime_end_ts: int | None = None
    source: str = ""
    id: int | None = None
    #: Where the request was read, for a dead letter should it be refused later.
    record_topic: str | None = None
    record_partition: int | None = None
    record_offset: int | None = None
    #: The request's CloudEvents ``time``, as the intake admits it (not read back: the
    #: database works out the time to reclaim, whatever the time's range).
    requested_at: datetime | None = None

    @property
    def causation_id(self) -> str:
        """What the removal events and the dead letter of this request name as their
        ``causationid``: its own event id."""
        return self.event_id

    @property
    def expired_tag(self) -> ExpiredTag:
        """The tag a ``tag-expired`` or ``legacy-tag-expired`` request names."""
        legacy = self.event_type == "legacy-tag-expired"
        tag_id = self.repository_tag_id if legacy else self.tag_id
        assert tag_id is not None, "an expiry request names its tag"
        return ExpiredTag(tag_id, legacy=legacy)

    @classmethod
    def of(cls, request: Request, *, topic: str, partition: int, offset: int) -> WorkItem:
        """The work a request read at ``topic``/``partition``/``offset`` asks for."""
        data = request.data
        tag = data if isinstance(data, TagExpired) else None
        legacy = data if isinstance(data, LegacyTagExpired) else None
        return cls(
            source=request.event.source,
            event_id=request.event.id,
            event_type=request.event.type.removeprefix(TYPE_PREFIX),
            repository_id=data.repository_id,
            repository_path=data.repository_path,
            tag_id=tag.tag_id if tag else None,
            lifetime_end_ms=tag.lifetime_end_ms if tag else None,
            repository_tag_id=legacy.repository_tag_id if legacy else None,
            lifetime_end_ts=legacy.lifetime_end_ts if legacy else None,
            record_topic=topic,
            record_partition=partition,
            record_offset=offset,
            requested_at=request.event.time,
        )


@dataclass(frozen=True, slots=True)
class RepositoryState:
    path: str
    state: str
    marked: bool  # due for purge (gc.repository_is_marked)


@dataclass(frozen=True, slots=True)
class ExpiringTag:
    """The tag a ``tag-expired`` (or pre-OCI ``legacy-tag-expired``) request names,
    as the database has it now."""

    immutable: bool
    due: bool
    #: When it falls due (saturated: never past the bigint range).
    due_at_ms: int


async def known(conn: Connection, items: Sequence[WorkItem]) -> set[tuple[str, str]]:
    """The (source, event id) pairs among ``items`` that were admitted before."""
    rows = await conn.fetch(
        _QUERIES["known"], [item.source for item in items], [item.event_id for item in items]
    )
    return {(row["source"], row["event_id"]) for row in rows}


async def repositories(conn: Connection, ids: Iterable[int]) -> dict[int, RepositoryState]:
    rows = await conn.fetch(_QUERIES["repositories"], list(ids))
    return {row["id"]: RepositoryState(row["path"], row["state"], row["marked"]) for row in rows}


async def admit(conn: Connection, items: Sequence[WorkItem], now_ms: int) -> None:
    """Make ``items`` durable, due at ``now_ms``, in their order; each with its time, or
    (without one) the time it is admitted."""
    if not items:
        return
    times = [_wall_time_and_offset(item.requested_at) for item in items]
    await conn.execute(
        _QUERIES["admit"],
        [item.source for item in items],
        [item.event_id for item in items],
        [item.event_type for item in items],
        [item.repository_id for item in items],
        [item.repository_path for item in items],
        [item.tag_id for item in items],
        [item.lifetime_end_ms for item in items],
        [item.record_topic for item in items],
        [item.record_partition for item in items],
        [item.record_offset for item in items],
        now_ms,
        [item.repository_tag_id for item in items],
        [item.lifetime_end_ts for item in items],
        [wall_time for wall_time, _ in times],
        [offset for _, offset in times],
    )


def _wall_time_and_offset(time: datetime | None) -> tuple[str | None, int | None]:
    """A time as the ``admit`` query takes it: its wall-clock time and UTC offset, which
    any time holds (its instant in UTC may be past what a datetime holds)."""
    if time is None:
        return None, None
    offset = time.utcoffset() or timedelta()
    return time.replace(tzinfo=None).isoformat(), offset // timedelta(seconds=1)


async def claim(conn: Connection, now_ms: int, limit: int) -> list[WorkItem]:
    """Lock up to ``limit`` requests due, each of a different repository (see
    ``work.sql``); hold the transaction while working on them."""
    await conn.execute(_QUERIES["keep_claim_open"])
    rows = await conn.fetch(_QUERIES["claim"], now_ms, limit)
    return [WorkItem(**dict(row)) for row in rows]


async def expiring_tag(conn: Connection, item: WorkItem, now_ms: int) -> ExpiringTag | None:
    """The tag of a ``tag-expired`` or ``legacy-tag-expired`` request while it still
    ended when the request says; None when the request is stale (see
    ``gc.expiring_tag``, ``gc.expiring_legacy_tag``)."""
    if item.event_type == "legacy-tag-expired":
        query, tag_id, end = "expiring_legacy_tag", item.repository_tag_id, item.lifetime_end_ts
    else:
        query, tag_id, end = "expiring_tag", item.tag_id, item.lifetime_end_ms
    row = await conn.fetchrow(_QUERIES[query], tag_id, item.repository_id, end, now_ms)
    return None if row is None else ExpiringTag(**dict(row))


async def finish(conn: Connection, request_id: int, outcome: str, finished_by: str) -> float | None:
    """Finish a request; return the seconds from its time to its removals committed
    (None when none committed under it, or its time is unknown)."""
    reclaim_s: float | None = await conn.fetchval(
        _QUERIES["finish"], request_id, outcome, finished_by
    )
    return reclaim_s


async def finish_stale(
    conn: Connection, repository_ids: Sequence[int], finished_by: str
) -> list[tuple[WorkItem, float | None]]:
    """Finish, as ``stale``, the tag expiries of these repositories that can only be
    stale (see ``work.sql``); return them, each with its seconds to reclaim as
    :func:`finish` says."""
    rows = await conn.fetch(_QUERIES["finish_stale"], list(repository_ids), finished_by)
    finished = []
    for row in rows:
        fields = dict(row)
        reclaim_s = fields.pop("reclaim_s")
        finished.append((WorkItem(**fields), reclaim_s))
    return finished


async def with_candidates(conn: Connection, repository_ids: Sequence[int]) -> set[int]:
    """The repositories among ``repository_ids`` with candidates waiting."""
    rows = await conn.fetch(_QUERIES["with_candidates"], repository_ids)
    return {row["repository_id"] for row in rows}


async def defer(conn: Connection, request_id: int, due_at_ms: int) -> None:
    await conn.execute(_QUERIES["defer"], request_id, due_at_ms)


async def count_due(conn: Connection, now_ms: int) -> int:
    count: int = await conn.fetchval(_QUERIES["count_due"], now_ms)
    return count


async def prune(conn: Connection, retention: timedelta) -> int:
    """Forget requests finished more than ``retention`` ago; return how many went."""
    count: int = await conn.fetchval(_QUERIES["prune"], retention)
    return count
