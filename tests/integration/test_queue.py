"""gc.request claims: one request per repository at a time, in arrival order."""

from __future__ import annotations

import asyncpg

from collector.work import queue
from collector.work.queue import WorkItem

NOW_MS = 1_000_000


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
            claimed = await queue.claim(first, NOW_MS)
            assert claimed is not None
            assert claimed.event_id == "a1"
            async with second.transaction():
                other = await queue.claim(second, NOW_MS)
                assert other is not None
                assert other.event_id == "b1"
                async with third.transaction():
                    assert await queue.claim(third, NOW_MS) is None
            assert claimed.id is not None
            await queue.finish(first, claimed.id, "collected", "test")
        async with third.transaction():
            following = await queue.claim(third, NOW_MS)
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
            early = await queue.claim(conn, NOW_MS)
            assert early is not None
            assert early.id is not None
            await queue.defer(conn, early.id, NOW_MS + 60_000)
        async with conn.transaction():
            later = await queue.claim(conn, NOW_MS)
            assert later is not None
            assert later.event_id == "later"
        assert await queue.count_due(conn, NOW_MS) == 1
        async with conn.transaction():
            again = await queue.claim(conn, NOW_MS + 60_000)
            assert again is not None
            assert again.event_id == "early"
