"""The broker away longer than the produce timeout during a large collection through
Kafka, on a broker of the suite's own: shut down cleanly while removal events are in
flight (what once made aiokafka spin), then back."""

from __future__ import annotations

import asyncio
import os
from asyncio.subprocess import Process
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.brokers import SpareBroker, running_broker
from tests.faults.harness import (
    SCALE,
    Final,
    Pipeline,
    Workload,
    assert_loses_nothing,
    assert_never_exited,
    assert_never_worked_twice_at_once,
    fault_mid_run,
)

PORT, CONTROLLER_PORT = 19192, 19193
#: Short, so that the outage outlasts it several times over.
PRODUCE_TIMEOUT_S = 3.0


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[SpareBroker]:
    async with running_broker(tmp_path / "services", PORT, CONTROLLER_PORT) as broker:
        yield broker


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a running process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def test_the_broker_away_longer_than_the_produce_timeout_loses_nothing(
    broker: SpareBroker, workload: Workload, baseline: Final, fault_logs: Path
) -> None:
    """Away for SCALE.outage_s (the produce timeout is 3 s) with events in flight: the
    service rides it out, publishes every event once it is back (some twice: at least
    once, same ids), and ends where the undisturbed run did."""
    total = sum(baseline.removals.values())
    busy = 0.0

    async def away(run: Pipeline, process: Process) -> None:
        nonlocal busy
        await broker.down()
        busy_before = cpu_seconds(process.pid)
        await asyncio.sleep(SCALE.outage_s)
        busy = cpu_seconds(process.pid) - busy_before
        await broker.up()

    run, faulted = await fault_mid_run(
        workload,
        "broker",
        fault_logs,
        away,
        at=total // 3,
        kafka_bootstrap=broker.bootstrap,
        kafka_produce_timeout_s=PRODUCE_TIMEOUT_S,
    )

    assert_never_exited(run)
    lines = assert_never_worked_twice_at_once(run)
    events = Counter(line.get("event") for line in lines)
    assert events["broker_unavailable"] >= 1, "the outage was felt"
    assert_loses_nothing(faulted, baseline, workload)
    repeats = len(faulted.published) - len(set(faulted.published))
    # For README's figures (run with -s); the busy loop is test_broker_outage.py's.
    print(
        f"broker away {SCALE.outage_s:g} s: {busy:.2f} CPU s meanwhile,"
        f" {len(lines)} log lines in all, {repeats} events published twice"
    )
