"""The fault suite's shared world: a PostgreSQL server of its own (faults restart, stop
and crash it), one workload on it, and that workload's undisturbed run."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.faults.harness import (
    SCALE,
    Final,
    Workload,
    assert_never_exited,
    assert_never_worked_twice_at_once,
    build_workload,
    dispose,
    final,
    pipeline,
    sample,
)
from tests.postgres import SparePostgres

#: The suite's server, beside the shared one on 5432.
PORT = 15433


@pytest.fixture(scope="session")
def fault_logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where every run's log goes; kept by pytest for a look after a failure."""
    return tmp_path_factory.mktemp("fault-logs")


@pytest.fixture(scope="session")
async def server() -> AsyncIterator[SparePostgres]:
    # Not under pytest's temporary root: its mode keeps the postgres user out.
    directory = Path(tempfile.mkdtemp(prefix="registry-gc-faults-"))
    postgres = SparePostgres(directory, PORT)
    await postgres.up()
    try:
        yield postgres
    finally:
        await postgres.down()
        shutil.rmtree(directory)


@pytest.fixture(scope="session")
async def workload(server: SparePostgres) -> Workload:
    return await build_workload(server, SCALE)


@pytest.fixture(scope="session")
async def baseline(workload: Workload, fault_logs: Path) -> Final:
    """The undisturbed run every faulted one must equal."""
    run = await pipeline(workload, "baseline", fault_logs)
    try:
        process = await run.start()
        load = await sample(run, process)
        await run.finish(process)
        assert_never_exited(run)
        assert_never_worked_twice_at_once(run)
        state = await final(run)
    finally:
        await dispose(run)
    # A workload worth faulting: thousands of removals, every kind of request served.
    assert sum(state.removals.values()) > 1000
    assert set(state.outcomes.values()) >= {"collected", "purged", None}
    assert state.pending == 0
    assert set(state.set_aside.values()) == workload.oversized_digests
    # The load it was: drained to the end, memory bounded (the figures: run with -s).
    assert load.final_lag == 0
    assert load.peak_rss_mib < 512
    print(
        f"load: {len(workload.requests)} requests, {sum(state.removals.values())} removals"
        f" in {load.seconds:.1f} s; peak RSS {load.peak_rss_mib:.0f} MiB, peak lag"
        f" {load.peak_lag}, peak outbox {load.peak_outbox}"
    )
    return state
