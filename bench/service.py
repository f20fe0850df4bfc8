"""Benchmark: the whole pipeline, requests over Kafka to removal events on Kafka.

    .venv/bin/python -m bench.service [--repositories 200] [--requests tags|sweeps]

Seeds a registry on a throwaway database `registry_bench_service`, expires
40% of its tags and marks 10% of its repositories for deletion, publishes the
requests (``tags``: one tag-expired per expired tag and one repo-deleted per
marked repository, as a registry sends them; ``sweeps``: one request per
repository, as `collector scan` does) on fresh topics, and times
`collector run` from start until every request is finished and every removal
event is acknowledged by the broker (the idle wait that ends the run is not
counted). Not part of the test suite: figures depend on the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time

import asyncpg

from bench.collect import ADMIN_URL, total_rows
from bench.harness import bench_settings
from collector import publish
from collector.clock import SystemClock
from collector.config import Settings
from collector.db.migrations import migrate
from collector.demo.seed import Shape, delete_repositories, expire_tags, plan_registry, write
from collector.logging import configure_logging
from collector.service import Service
from events import RepoDeleted, RequestData, TagExpired
from tests.pipeline import topics

DATABASE = "registry_bench_service"
URL = ADMIN_URL.rsplit("/", 1)[0] + "/" + DATABASE
_IDLE_S = 0.5


async def fresh_database() -> None:
    admin = await asyncpg.connect(ADMIN_URL)
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
        await admin.execute(f"CREATE DATABASE {DATABASE}")
    finally:
        await admin.close()


async def prepare(repositories: int, mode: str, settings: Settings) -> tuple[int, int]:
    """Seed, expire, mark and publish; return (rows, requests)."""
    conn = await asyncpg.connect(URL)
    try:
        await migrate(conn)
        now = SystemClock().now_ms()
        plan = plan_registry(Shape(repositories=repositories), now_ms=now, seed=3)
        await write(conn, plan)
        expired = await expire_tags(conn, plan.run, fraction=0.4, now_ms=now, seed=3)
        deleted = await delete_repositories(conn, plan.run, fraction=0.1, seed=3)
        if mode == "tags":
            requests: list[RequestData] = [TagExpired(**vars(tag)) for tag in expired]
            requests += [RepoDeleted(**vars(repository)) for repository in deleted]
        else:
            requests = (await publish.scan(conn, now)).requests
        rows = await total_rows(conn)
    finally:
        await conn.close()
    await publish.publish(settings, requests)
    return rows, len(requests)


async def main(repositories: int, mode: str, concurrency: int) -> None:
    await fresh_database()
    settings = bench_settings(URL, repository_concurrency=concurrency)
    async with topics(settings):
        rows_before, requests = await prepare(repositories, mode, settings)
        started = time.perf_counter()
        summary = await Service(settings, exit_when_idle_s=_IDLE_S).run()
        seconds = time.perf_counter() - started - _IDLE_S
        conn = await asyncpg.connect(URL)
        try:
            removed_rows = rows_before - await total_rows(conn)
            objects = await conn.fetchval("SELECT count(*) FROM gc.outbox")
        finally:
            await conn.close()
    outcomes = dict(sorted(summary.outcomes.items()))
    print(
        f"{repositories} repositories, {requests:,} {mode} requests, concurrency {concurrency}:"
        f" {seconds:.2f} s end to end (the service's start and group join included)\n"
        f"  {requests / seconds:,.0f} requests/s, {removed_rows / seconds:,.0f} registry rows/s"
        f" ({removed_rows:,} rows), {objects / seconds:,.0f} objects/s ({objects:,} removal"
        f" events, {summary.published:,} published); outcomes {outcomes}"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repositories", type=int, default=200)
    parser.add_argument("--requests", choices=("tags", "sweeps"), default="tags")
    parser.add_argument("--concurrency", type=int, default=4)
    arguments = parser.parse_args()
    configure_logging(os.environ.get("COLLECTOR_LOG_LEVEL", "warning"))
    asyncio.run(main(arguments.repositories, arguments.requests, arguments.concurrency))
