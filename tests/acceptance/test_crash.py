"""SIGKILL during a large collection loses nothing: a restart finishes the job, and the
final registry and the removal events equal those of an uninterrupted run."""

from __future__ import annotations

import asyncio
import os
import random

import asyncpg

from collector.clock import SystemClock
from collector.demo.seed import Shape, delete_repositories, expire_tags, plan_registry, write
from tests.acceptance.conftest import (
    CreateDatabase,
    collector_command,
    kill_when,
    removals,
    run_collector,
    state,
)

ARGS = ("collect", "--all", "--purge", "--no-publish", "--batch-size", "25")


async def test_sigkill_at_random_moments_then_restart_equals_uninterrupted_run(
    create_database: CreateDatabase,
) -> None:
    """Kill the collector four times mid-collection, restart it: same rows left, the same
    removals reported exactly once each, no candidate left behind."""
    source = await create_database("crash_source")
    conn = await asyncpg.connect(source)
    try:
        now_ms = SystemClock().now_ms()
        plan = plan_registry(
            Shape(repositories=60, manifests_per_repository=8), now_ms=now_ms, seed=7
        )
        await write(conn, plan)
        await expire_tags(conn, plan.run, fraction=0.4, now_ms=now_ms, seed=7)
        await delete_repositories(conn, plan.run, fraction=0.15, seed=7)
    finally:
        await conn.close()
    straight = await create_database("crash_straight", template="crash_source")
    crashed = await create_database("crash_killed", template="crash_source")

    done = run_collector(*ARGS, "--database-url", straight)
    assert done.returncode == 0, done.stderr
    expected = await removals(straight)
    total = sum(expected.values())
    assert total > 2000  # a collection large enough to be killed in the middle

    rng = random.Random(os.environ.get("CRASH_SEED", "sigkill"))
    kills = 0
    for share in sorted(rng.uniform(0.05, 0.9) for _ in range(4)):
        process = await asyncio.create_subprocess_exec(
            *collector_command(*ARGS, "--database-url", crashed),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            env={**os.environ, "COLLECTOR_LOG_LEVEL": "warning"},
        )
        kills += await kill_when(
            crashed, process, "SELECT count(*) >= $1 FROM gc.outbox", int(total * share)
        )
    assert kills >= 3, "the collector must have been killed mid-run"
    finish = run_collector(*ARGS, "--database-url", crashed)
    assert finish.returncode == 0, finish.stderr

    assert await state(crashed) == await state(straight)
    reported = await removals(crashed)
    assert reported == expected
    assert max(reported.values()) == 1, "every removal reported once"
