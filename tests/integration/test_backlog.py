"""The service's backlog gauges: undecided candidates by kind, and the oldest one's age."""

from __future__ import annotations

import asyncio

import asyncpg
from prometheus_client import REGISTRY

from collector import metrics
from collector.service import Backlog
from tests.pipeline import until


def gauge(name: str, kind: str) -> float | None:
    return REGISTRY.get_sample_value(name, {"kind": kind})


async def test_backlog_counts_the_candidates_of_each_kind_and_the_oldest_ones_age(
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
