"""The service's pruner: forgets what is past the retention, keeps everything else."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import asyncpg

from collector.service import Pruner
from tests.pipeline import until


async def test_pruner_forgets_old_finished_requests_and_published_events_only(
    db: asyncpg.Pool[asyncpg.Record],
) -> None:
    """Finished requests and published events older than the retention go; pending
    requests, unpublished events and recent rows stay, however old they are."""
    await db.execute(
        """
        INSERT INTO gc.request (source, event_id, event_type, repository_id, repository_path,
                                due_at_ms, received_at, finished_at, outcome)
        VALUES ('/t', 'old-done', 'repo-sweep', 1, 'a/b', 0, now() - interval '9 days',
                now() - interval '8 days', 'collected'),
               ('/t', 'new-done', 'repo-sweep', 1, 'a/b', 0, now(), now(), 'collected'),
               ('/t', 'old-pending', 'repo-sweep', 1, 'a/b', 0, now() - interval '9 days',
                NULL, NULL)
        """
    )
    await db.execute(
        """
        INSERT INTO gc.outbox (event_id, event_type, key, event, published_at)
        VALUES (gen_random_uuid(), 't', 'k', '{}', now() - interval '8 days'),
               (gen_random_uuid(), 't', 'k', '{}', now()),
               (gen_random_uuid(), 't', 'k', '{}', NULL)
        """
    )
    await db.execute("UPDATE gc.outbox SET created_at = now() - interval '9 days'")
    pruner = Pruner(db, timedelta(days=7))
    running = asyncio.create_task(pruner.run())

    async def pruned() -> bool:
        return bool(await db.fetchval("SELECT count(*) = 2 FROM gc.request"))

    await until(pruned)
    pruner.stop()
    await asyncio.wait_for(running, 5)

    requests = await db.fetch("SELECT event_id FROM gc.request ORDER BY event_id")
    assert [row["event_id"] for row in requests] == ["new-done", "old-pending"]
    published = await db.fetch("SELECT published_at IS NULL AS pending FROM gc.outbox")
    assert sorted(row["pending"] for row in published) == [False, True]
