"""Thousands of seeded hostile records (malformed, forged, extreme) mixed among the
valid requests: each refused with its reason or found stale, none deletes anything
live, and the valid requests end where the undisturbed run did."""

from __future__ import annotations

import dataclasses
import random
from collections import Counter
from pathlib import Path

import asyncpg

from tests.faults.harness import (
    SCALE,
    Final,
    Workload,
    assert_loses_nothing,
    assert_never_exited,
    assert_never_worked_twice_at_once,
    dispose,
    final,
    pipeline,
)
from tests.faults.hostile import MAX_REQUEST_BYTES, Live, hostile


async def live_rows(workload: Workload) -> list[Live]:
    """Live tags of repositories nobody marked for deletion: what forgeries aim at."""
    conn = await asyncpg.connect(workload.server.url(workload.source))
    try:
        rows = await conn.fetch(
            """
            SELECT n.name AS namespace, r.name AS repository, r.id AS repository_id,
                   t.name AS tag, t.id AS tag_id
            FROM tag t JOIN repository r ON r.id = t.repository_id
            JOIN namespace n ON n.id = r.namespace_id
            WHERE t.lifetime_end_ms IS NULL AND r.state = 'normal' AND n.name <> ''
            ORDER BY t.id LIMIT 200
            """
        )
    finally:
        await conn.close()
    return [Live(**dict(row)) for row in rows]


async def test_hostile_records_among_valid_requests_change_nothing_they_should_not(
    workload: Workload, baseline: Final, fault_logs: Path
) -> None:
    made = hostile(workload.requests, await live_rows(workload), SCALE.hostile, seed=29)
    records = [*workload.requests, *made.records]
    random.Random(31).shuffle(records)
    run = await pipeline(workload, "hostile", fault_logs, records=records)
    try:
        await run.serve(COLLECTOR_MAX_REQUEST_BYTES=str(MAX_REQUEST_BYTES))
        faulted = await final(run)
    finally:
        await dispose(run)

    assert_never_exited(run)
    lines = assert_never_worked_twice_at_once(run)
    # Forgeries that decode and name live rows find their tag alive: stale, nothing gone.
    assert {faulted.outcomes[event_id] for event_id in made.forged} == {"stale"}
    # Each refusal with its reason. A valid request (or a copy of it) read after its
    # repository was purged is refused as unknown too, as in any run: how many depends
    # on timing. A copy read while its original is known is a duplicate.
    late = [
        cause
        for cause, reason in faulted.letters
        if cause in baseline.outcomes and reason == "unknown-repository"
    ]
    assert faulted.dead_letters == made.refused + Counter({"unknown-repository": len(late)})
    duplicates = sum(1 for line in lines if line.get("event") == "request_duplicate")
    assert duplicates == made.duplicates - (len(late) - len(set(late)))
    print(f"hostile: {sum(made.refused.values())} refused {dict(made.refused)}, "
          f"{len(made.forged)} forged, {made.duplicates} duplicates")  # fmt: skip
    valid_only = {k: v for k, v in faulted.outcomes.items() if k in baseline.outcomes}
    assert_loses_nothing(dataclasses.replace(faulted, outcomes=valid_only), baseline, workload)
