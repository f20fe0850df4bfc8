"""Crashes and database faults during a large collection through Kafka: SIGKILLs at
seeded moments, and PostgreSQL restarted, stopped longer than any retry budget, and
crashed. Each run must equal the undisturbed one (see harness.assert_loses_nothing)."""

from __future__ import annotations

import asyncio
import os
import random
from asyncio.subprocess import Process
from pathlib import Path

import pytest

from tests.faults.harness import (
    SCALE,
    Fault,
    Final,
    Pipeline,
    Workload,
    assert_loses_nothing,
    assert_never_exited,
    assert_never_worked_twice_at_once,
    dispose,
    fault_mid_run,
    final,
    outbox_count,
    outbox_reaches,
    pipeline,
)


async def test_sigkills_at_seeded_moments_lose_nothing(
    workload: Workload, baseline: Final, fault_logs: Path
) -> None:
    """SCALE.kills SIGKILLs of `collector run`, each at a seeded share of the removals,
    then a run to the end."""
    total = sum(baseline.removals.values())
    rng = random.Random(os.environ.get("FAULTS_SEED", "sigkill"))
    run = await pipeline(workload, "killed", fault_logs)
    try:
        kills = 0
        for share in sorted(rng.uniform(0.05, 0.9) for _ in range(SCALE.kills)):
            # Past the seeded share, and past what earlier runs did: killed mid-work.
            target = max(int(total * share), await outbox_count(run) + 1)
            process = await run.start()
            try:
                await asyncio.wait_for(outbox_reaches(run, target), 300)
            except AssertionError:
                continue  # the run finished everything before it got there
            await asyncio.sleep(rng.uniform(0, 0.05))  # anywhere in a transaction
            kills += await run.kill(process)
        await run.serve()
        faulted = await final(run)
    finally:
        await dispose(run)

    print(f"sigkill: {kills} kills mid-run of {sum(baseline.removals.values())} removals")
    assert kills >= max(2, SCALE.kills // 2), "killed mid-run"
    assert_never_exited(run)
    assert_never_worked_twice_at_once(run)
    assert_loses_nothing(faulted, baseline, workload)


async def restart(run: Pipeline, _: Process) -> None:
    await run.workload.server.restart()


async def stop_longer_than_any_retry(run: Pipeline, _: Process) -> None:
    # The engine retries a lost transaction for a few seconds; the workers, relay and
    # intake wait out any outage. SCALE.outage_s is past the first, not the rest.
    await run.workload.server.stop()
    await asyncio.sleep(SCALE.outage_s)
    await run.workload.server.start()


async def crash(run: Pipeline, _: Process) -> None:
    await run.workload.server.crash()
    await asyncio.sleep(1)
    await run.workload.server.start()


@pytest.mark.parametrize("fault", [restart, stop_longer_than_any_retry, crash])
async def test_a_postgresql_fault_mid_run_loses_nothing(
    fault: Fault, workload: Workload, baseline: Final, fault_logs: Path
) -> None:
    """PostgreSQL restarted, stopped for SCALE.outage_s, or crashed (immediate stop, WAL
    recovery) at a third of the removals: the one service process rides it out, exits 0
    when idle, and ends where the undisturbed run did."""
    total = sum(baseline.removals.values())

    run, faulted = await fault_mid_run(workload, fault.__name__, fault_logs, fault, at=total // 3)

    assert_never_exited(run)
    lines = assert_never_worked_twice_at_once(run)
    assert "database_unavailable" in {line.get("event") for line in lines}, "the fault was felt"
    print(f"postgresql {fault.__name__}: survived, {len(lines)} log lines")
    assert_loses_nothing(faulted, baseline, workload)
