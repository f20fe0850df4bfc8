"""gc.request claims: one request per repository at a time, in arrival order."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import asyncpg
import pytest

from collector.db.connector import Connection
from collector.outbox import store
from collector.outbox.store import Removed
from collector.work import queue
from collector.work.queue import WorkItem
from events import RepoSweep, TagRemoved, decode_request, request_event, to_record
from tests.registry import DAY_MS, Registry, at

NOW_MS = 1_000_000


async def claim_one(conn: Connection, now_ms: int = NOW_MS) -> WorkItem | None:
    claimed = await queue.claim(conn, now_ms, 1)
    return claimed[0] if claimed else None


def item(event_id: str, repository_id: int) -> WorkItem:
    return WorkItem(
        source="/t",
        event_id=event_id,
        event_type="repo-sweep",
        repository_id=repository_id,
        repository_path=f"acme/r{repository_id}",
    )


async def test_a_repository_s_requests_are_claimed_one_at_a_time_in_order(
    db: asyncpg.Pool[asyncpg.Record],
) -> None:
    """While a worker holds a repository's oldest request, other workers get other
    repositories' requests, never the next one of the same repository; once the
    first is finished, the next is claimable."""
    async with db.acquire() as conn:
        await queue.admit(conn, [item("a1", 1), item("a2", 1), item("b1", 2)], NOW_MS)
    first, second, third = [await db.acquire() for _ in range(3)]
    try:
        async with first.transaction():
            claimed = await claim_one(first)
            assert claimed is not None
            assert claimed.event_id == "a1"
            async with second.transaction():
                other = await claim_one(second)
                assert other is not None
                assert other.event_id == "b1"
                async with third.transaction():
                    assert await claim_one(third) is None
            assert claimed.id is not None
            await queue.finish(first, claimed.id, "collected", "test")
        async with third.transaction():
            following = await claim_one(third)
            assert following is not None
            assert following.event_id == "a2"
    finally:
        for conn in (first, second, third):
            await db.release(conn)


async def test_a_deferred_request_holds_back_nothing_until_it_is_due(
    db: asyncpg.Pool[asyncpg.Record],
) -> None:
    """A request deferred to later does not block the requests behind it; once due it
    is claimed like any other."""
    async with db.acquire() as conn:
        await queue.admit(conn, [item("early", 1), item("later", 1)], NOW_MS)
        async with conn.transaction():
            early = await claim_one(conn)
            assert early is not None
            assert early.id is not None
            await queue.defer(conn, early.id, NOW_MS + 60_000)
        async with conn.transaction():
            later = await claim_one(conn)
            assert later is not None
            assert later.event_id == "later"
        assert await queue.count_due(conn, NOW_MS) == 1
        async with conn.transaction():
            again = await claim_one(conn, NOW_MS + 60_000)
            assert again is not None
            assert again.event_id == "early"


async def test_a_batch_claim_takes_the_oldest_request_of_each_repository(
    db: asyncpg.Pool[asyncpg.Record],
) -> None:
    """A worker claiming many at once gets each repository's head, in arrival order,
    and nothing another worker holds."""
    async with db.acquire() as conn:
        await queue.admit(
            conn, [item("a1", 1), item("b1", 2), item("a2", 1), item("c1", 3)], NOW_MS
        )
    first, second = [await db.acquire() for _ in range(2)]
    try:
        async with first.transaction():
            assert [i.event_id for i in await queue.claim(first, NOW_MS, 2)] == ["a1", "b1"]
            async with second.transaction():
                assert [i.event_id for i in await queue.claim(second, NOW_MS, 10)] == ["c1"]
    finally:
        for conn in (first, second):
            await db.release(conn)


async def test_a_claim_outlives_the_server_s_idle_in_transaction_timeout(
    db: asyncpg.Pool[asyncpg.Record], database_url: str
) -> None:
    """A claim sits idle in its transaction while the engine works on other connections.
    A server or role setting of idle_in_transaction_session_timeout shorter than that
    work must not end the claim's session, which would redo the work."""
    async with db.acquire() as conn:
        await queue.admit(conn, [item("long", 1)], NOW_MS)
    strict = {"idle_in_transaction_session_timeout": "100"}  # ms
    worker = await asyncpg.connect(database_url, server_settings=strict)
    try:
        async with worker.transaction():
            claimed = await claim_one(worker)
            assert claimed is not None
            assert claimed.id is not None
            await asyncio.sleep(0.5)  # the engine at work
            await queue.finish(worker, claimed.id, "collected", "test")
    finally:
        await worker.close()
    outcome = await db.fetchval("SELECT outcome FROM gc.request WHERE event_id = 'long'")
    assert outcome == "collected"


def expiry(event_id: str, repository_id: int, tag_id: int, lifetime_end_ms: int) -> WorkItem:
    return WorkItem(
        source="/t",
        event_id=event_id,
        event_type="tag-expired",
        repository_id=repository_id,
        repository_path="acme/app",
        tag_id=tag_id,
        lifetime_end_ms=lifetime_end_ms,
    )


async def test_finish_stale_ends_exactly_the_expiries_that_can_only_be_stale(
    db: asyncpg.Pool[asyncpg.Record], registry: Registry
) -> None:
    """Of a repository's queued requests, the tag expiries whose tag is gone or has
    another lifetime end now are finished as stale, due or not; valid expiries, other
    request types and other repositories' requests are left alone."""
    acme = await registry.namespace("acme")
    app, other = await registry.repository(acme, "app"), await registry.repository(acme, "other")
    manifest = await registry.manifest(app)
    end = registry.now_ms - DAY_MS
    valid = await registry.tag(app, manifest, "valid", end_ms=end)
    restored = await registry.tag(app, manifest, "restored", end_ms=None)
    elsewhere = await registry.tag(other, await registry.manifest(other), "x", end_ms=end)
    async with db.acquire() as conn:
        await queue.admit(
            conn,
            [
                expiry("valid", app, valid, end),
                expiry("gone", app, 999_999, end),
                expiry("restored", app, restored, end),
                expiry("re-expired", app, valid, end - 1),
                expiry("moved", app, elsewhere, end),  # the tag is in another repository
                item("sweep", app),
                expiry("other-repo-gone", other, 999_999, end),
            ],
            NOW_MS,
        )
        await conn.execute("UPDATE gc.request SET due_at_ms = $1 WHERE event_id = 'gone'", 2**60)
        async with conn.transaction():
            stale = await queue.finish_stale(conn, [app], "test")
        rows = await conn.fetch("SELECT event_id, outcome FROM gc.request ORDER BY id")

    assert sorted(s.event_id for s, _ in stale) == ["gone", "moved", "re-expired", "restored"]
    assert {row["event_id"]: row["outcome"] for row in rows} == {
        "valid": None,
        "gone": "stale",
        "restored": "stale",
        "re-expired": "stale",
        "moved": "stale",
        "sweep": None,
        "other-repo-gone": None,
    }


#: Times a request can carry, at the ends of what RFC 3339 and a Python datetime allow:
#: year 1 at +23:59 is before year 1 in UTC, 9999-12-31 at -23:59 after its end.
EDGE_TIMES = [
    "0001-01-01T00:00:00+23:59",
    "0001-01-01T00:00:00Z",
    "9999-12-31T23:59:59.999999-23:59",
    "9999-12-31T23:59:59.999999Z",
    "1970-01-01T00:00:00.000001+00:00",
]
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def timed_sweep(repository_id: int, time: str, n: int) -> WorkItem:
    """A repo-sweep request decoded from a record whose CloudEvents time is ``time``."""
    sweep = RepoSweep(namespace="acme", repository=f"r{repository_id}", repository_id=repository_id)
    value, headers = to_record(request_event(sweep, source="/t", event_id=f"timed-{n}"))
    event = json.loads(value)
    event["time"] = time
    key, value = sweep.repository_path.encode(), json.dumps(event).encode()
    request = decode_request(key=key, value=value, headers=headers)
    return WorkItem.of(request, topic="requests", partition=0, offset=n)


async def test_any_time_a_request_can_carry_is_stored_to_the_microsecond(
    db: asyncpg.Pool[asyncpg.Record],
) -> None:
    """The intake stores each request's CloudEvents time, however far out: times whose
    UTC instant no Python datetime holds included (asyncpg would overflow converting
    them; the server reads the text). A request without one gets its admission time."""
    items = [timed_sweep(n + 1, time, n) for n, time in enumerate(EDGE_TIMES)]
    untimed = item("untimed", 99)
    async with db.acquire() as conn:
        await queue.admit(conn, [*items, untimed], NOW_MS)
        rows = await conn.fetch(
            "SELECT event_id, extract(epoch FROM requested_at) AS epoch,"
            " requested_at = received_at AS at_receipt FROM gc.request ORDER BY id"
        )

    def epoch(at: datetime) -> Decimal:
        return Decimal((at - EPOCH) // timedelta(microseconds=1)).scaleb(-6)

    assert [(row["event_id"], row["epoch"]) for row in rows[:-1]] == [
        (i.event_id, epoch(i.requested_at)) for i in items if i.requested_at is not None
    ]
    assert rows[0]["epoch"] < epoch(datetime(1, 1, 1, tzinfo=UTC))  # before year 1 in UTC
    assert rows[2]["epoch"] > epoch(datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC))
    assert (rows[-1]["event_id"], rows[-1]["at_receipt"]) == ("untimed", True)


async def removed_under(conn: Connection, *causation_ids: str) -> None:
    """A committed removal (its outbox row) caused by each of ``causation_ids``."""
    tags = [
        TagRemoved(
            namespace="acme",
            repository="app",
            repository_id=1,
            tag=f"t{n}",
            tag_id=n,
            manifest_digest="sha256:" + "a" * 64,
        )
        for n in range(len(causation_ids))
    ]
    async with conn.transaction():
        await store.write(
            conn, [Removed(t, c) for t, c in zip(tags, causation_ids, strict=True)], at(NOW_MS)
        )


@pytest.mark.parametrize("stale", [False, True], ids=["finish", "finish_stale"])
async def test_finishing_measures_from_the_request_s_time_to_its_removals_committed(
    db: asyncpg.Pool[asyncpg.Record], registry: Registry, stale: bool
) -> None:
    """A request finished with removals committed under its id gets reclaimed_at, and the
    seconds from its time to then: 0 for a time ahead of the clock, never negative;
    without removals, or without a time (admitted before migration 0013), None."""
    acme = await registry.namespace("acme")
    repositories = [await registry.repository(acme, f"r{n}") for n in range(4)]
    almost_a_day = timedelta(hours=23, minutes=59)
    times = {
        "past": datetime(1, 1, 1, tzinfo=timezone(almost_a_day)),
        "future": datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=timezone(-almost_a_day)),
        "nothing": datetime.now(UTC),
        "untimed": None,
    }
    # Expiries of a tag that does not exist: finish_stale can only finish them as stale.
    items = [
        WorkItem(
            source="/t",
            event_id=name,
            event_type="tag-expired",
            repository_id=repository,
            repository_path=f"acme/r{n}",
            tag_id=999_999,
            lifetime_end_ms=1,
            requested_at=time,
        )
        for n, ((name, time), repository) in enumerate(
            zip(times.items(), repositories, strict=True)
        )
    ]
    async with db.acquire() as conn:
        await queue.admit(conn, items, NOW_MS)
        # Admitted without a time, a request gets its admission time: as before 0013, none.
        await conn.execute("UPDATE gc.request SET requested_at = NULL WHERE event_id = 'untimed'")
        await removed_under(conn, "past", "future", "untimed")
        async with conn.transaction():
            if stale:
                finished = await queue.finish_stale(conn, repositories, "test")
                reclaim = {finished_item.event_id: s for finished_item, s in finished}
            else:
                rows = await conn.fetch("SELECT event_id, id FROM gc.request")
                ids = {row["event_id"]: row["id"] for row in rows}
                reclaim = {
                    name: await queue.finish(conn, ids[name], "collected", "test") for name in times
                }
        reclaimed = await conn.fetch(
            "SELECT event_id, reclaimed_at IS NOT NULL AS reclaimed FROM gc.request ORDER BY id"
        )

    past = reclaim["past"]
    assert past is not None
    assert past > (datetime(2026, 1, 1, tzinfo=UTC) - datetime(1, 1, 1, tzinfo=UTC)).total_seconds()
    assert (reclaim["future"], reclaim["nothing"], reclaim["untimed"]) == (0.0, None, None)
    assert {row["event_id"]: row["reclaimed"] for row in reclaimed} == {
        "past": True,
        "future": True,
        "nothing": False,
        "untimed": True,
    }
