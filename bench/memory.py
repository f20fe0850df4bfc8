"""Benchmark (e), memory: peak RSS of `collector run` and `collector collect --all --purge`.

    .venv/bin/python -m bench.memory [--rows 25000] [--results bench/results]
    .venv/bin/python -m bench.memory --rows 1000000      # the issue's figure

A registry of about ``--rows`` rows (the demo's generator) gets the throughput
scenario's garbage: 40% of its tags of both models expired, 10% of its
repositories marked for deletion. A copy of it is collected by `collector
collect --all --purge`; the original by `collector run --exit-when-idle`,
serving the requests `collector scan` would publish (a sweep or a purge per
repository with work). Each runs as a process of its own, and its peak RSS is
its VmHWM, sampled from /proc until it exits, so this harness's memory does not
count. The target is 100 MB or less at a million rows, and no more at five.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

import asyncpg

from bench import report
from bench.collect import give_garbage, total_rows
from bench.harness import bench_settings, run_measured, scratch_database
from collector import publish
from collector.clock import SystemClock
from collector.config import Settings
from collector.demo.seed import Shape, plan_registry, write
from collector.logging import configure_logging
from events import RequestData
from tests.pipeline import topics

#: Rows the demo's generator writes per repository, near enough to size a registry.
ROWS_PER_REPOSITORY = 250
#: How long `collector run` waits with nothing to do before it exits.
IDLE_S = 2.0


async def seed(url: str, rows: int) -> list[RequestData]:
    """Seed and give the registry its garbage; returns the requests a scan publishes."""
    conn = await asyncpg.connect(url)
    try:
        now = SystemClock().now_ms()
        shape = Shape(repositories=max(1, rows // ROWS_PER_REPOSITORY))
        plan = plan_registry(shape, now_ms=now, seed=5)
        await write(conn, plan)
        run = plan.run
        del plan  # a million rows planned weigh more than the collector should
        await give_garbage(conn, run, now, seed=5)
        return list((await publish.scan(conn, now)).requests)
    finally:
        await conn.close()


async def measure(url: str, settings: Settings, command: str) -> dict[str, object]:
    """Run one command on the registry at ``url``; its figure."""
    conn = await asyncpg.connect(url)
    try:
        before = await total_rows(conn)
    finally:
        await conn.close()
    arguments = command.split()
    measured = await asyncio.to_thread(
        run_measured, arguments, settings.model_copy(update={"database_url": url})
    )
    conn = await asyncpg.connect(url)
    try:
        removed = before - await total_rows(conn)
    finally:
        await conn.close()
    return {
        "command": f"collector {command}",
        "rows": before,
        "rows_removed": removed,
        "seconds": round(measured.seconds, 2),
        "peak_rss_mib": round(measured.peak_rss_mib, 1),
    }


async def memory(rows: int) -> list[dict[str, object]]:
    async with scratch_database("memory") as url:
        requests = await seed(url, rows)
        settings = bench_settings(url)
        async with topics(settings):
            async with scratch_database("memory_copy", template=url) as copy:
                collected = await measure(copy, settings, "collect --all --purge")
            await publish.publish(settings, requests)
            served = await measure(url, settings, f"run --exit-when-idle {IDLE_S}")
    served["requests"] = len(requests)
    return [collected, served]


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=25_000)
    parser.add_argument("--results", type=Path, default=Path("bench/results"))
    args = parser.parse_args(argv)
    configure_logging("warning")
    figures = asyncio.run(memory(args.rows))
    for figure in figures:
        print(
            f"{figure['command']}: {figure['rows']:,} rows, {figure['rows_removed']:,} removed"
            f" in {figure['seconds']} s, peak RSS {figure['peak_rss_mib']} MiB"
        )
    path = report.save("memory", figures, {"rows": args.rows}, args.results)
    labels = [
        str(figure["command"]).removeprefix("collector ").split(" --")[0] for figure in figures
    ]
    rss = [float(str(figure["peak_rss_mib"])) for figure in figures]
    report.bars(path.with_suffix(".png"), labels, rss, "peak RSS (MiB)", target=100 / 1.048576)
    print(f"results: {path}")
    return path


if __name__ == "__main__":
    main()
