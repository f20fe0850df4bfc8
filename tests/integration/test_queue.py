"""gc.request claims: one request per repository at a time, in arrival order."""

from __future__ import annotations

import asyncio

import asyncpg

from collector.db.connector import Connection
from collector.work import queue
from collector.work.queue import WorkItem
from tests.registry import DAY_MS, Registry

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

    assert sorted(s.event_id for s in stale) == ["gone", "moved", "re-expired", "restored"]
    assert {row["event_id"]: row["outcome"] for row in rows} == {
        "valid": None,
        "gone": "stale",
        "restored": "stale",
        "re-expired": "stale",
        "moved": "stale",
        "sweep": None,
        "other-repo-gone": None,
    }
