"""The service's backlog gauges: undecided candidates by kind, unpublished events, and
the age of the oldest of each."""

from __future__ import annotations

import asyncio

import asyncpg
from prometheus_client import REGISTRY

from collector import metrics
from collector.service import Backlog
from tests.pipeline import until


def gauge(name: str, kind: str) -> float | None:
    return REGISTRY.get_sample_value(name, {"kind": kind})


async def test_backlog_counts_candidates_and_unpublished_events_and_the_oldest_ones_age(
    db: asyncpg.Pool[asyncpg.Record],
) -> None:
    await db.execute(
        """
        INSERT INTO gc.candidate (kind, object_id, repository_id, causation_id, created_at)
        VALUES ('manifest', 1, 1, 'c', now() - interval '2 hours'),
               ('manifest', 2, 1, 'c', now()),
               ('blob', 3, NULL, 'c', now() - interval '1 minute')
        """
    )
    # Events no relay published: one waiting for 10 minutes, one published already.
    await db.execute(
        """
        INSERT INTO gc.outbox (event_id, event_type, key, event, created_at, published_at)
        VALUES (gen_random_uuid(), 't', 'k', '{}', now() - interval '10 minutes', NULL),
               (gen_random_uuid(), 't', 'k', '{}', now() - interval '1 hour', now())
        """
    )
    metrics.OUTBOX_PENDING.set(-1)
    for kind in ("manifest", "blob"):  # whatever a test before left there
        metrics.CANDIDATES.labels(kind).set(-1)
    backlog = Backlog(db)
    running = asyncio.create_task(backlog.run())
    try:
        await until(lambda: gauge("registry_gc_candidates", "manifest") == 2)
    finally:
        backlog.stop()
        await asyncio.wait_for(running, 5)

    assert gauge("registry_gc_candidates", "blob") == 1
    assert gauge("registry_gc_candidates", "label") == 0  # a kind with none says 0
    oldest = gauge("registry_gc_candidate_oldest_age_seconds", "manifest")
    assert oldest is not None
    assert 7200 <= oldest < 7300
    blob_age = gauge("registry_gc_candidate_oldest_age_seconds", "blob")
    assert blob_age is not None
    assert 60 <= blob_age < 160
    assert gauge("registry_gc_candidate_oldest_age_seconds", "image") == 0
    assert REGISTRY.get_sample_value("registry_gc_outbox_pending") == 1
    outbox_age = REGISTRY.get_sample_value("registry_gc_outbox_oldest_age_seconds")
    assert outbox_age is not None
    assert 600 <= outbox_age < 700
