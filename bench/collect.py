"""Benchmark: how fast the engine collects, and whether cost follows garbage or size.

    .venv/bin/python -m bench.collect [--repositories 600] [--scale 10] [--sweep-repositories N]
                                      [--oci-only]

The seeded registries hold both tag models (pre-OCI history behind some
legacy chains) unless ``--oci-only``.

1. throughput: seed a registry, expire 40% of its tags (of both models) and mark 10% of its
   repositories for deletion, then time one `collect --all --purge`; report
   rows deleted per second (every table, link rows included) and objects
   (removal events) per second.
2. invariant 9: collect the same garbage (one namespace's worth) in a
   registry and in one ``--scale`` times larger; the times should match.
3. the orphan sweep: seed a registry of ``--sweep-repositories`` (default:
   ``--repositories``), make 1% of its manifests, labels and blobs orphans
   and everything older than the grace period, then time one registry-wide
   sweep and collection; report rows judged per second.

Runs on a throwaway database `registry_bench` on the local services. Not
part of the test suite: figures depend on the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from dataclasses import dataclass

import asyncpg

from collector.clock import SystemClock
from collector.config import EMPTY_LAYER_DIGEST
from collector.db.connector import Connection, PoolDatabase
from collector.db.migrations import migrate
from collector.demo.seed import TABLES as SEEDED_TABLES
from collector.demo.seed import (
    Shape,
    delete_repositories,
    expire_legacy_tags,
    expire_tags,
    plan_registry,
    write,
)
from collector.engine import Engine, EngineConfig
from collector.limits import engine_pool_size
from collector.logging import configure_logging

ADMIN_URL = os.environ.get(
    "COLLECTOR_TEST_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
URL = ADMIN_URL.rsplit("/", 1)[0] + "/registry_bench"
#: What a collection can remove (namespaces are never removed).
TABLES = [table for table, _ in SEEDED_TABLES if table != "namespace"]


async def fresh_database(database: str = "registry_bench") -> str:
    """An empty, migrated ``database`` (dropped first if it exists); returns its URL."""
    admin = await asyncpg.connect(ADMIN_URL)
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
        await admin.execute(f"CREATE DATABASE {database}")
    finally:
        await admin.close()
    url = ADMIN_URL.rsplit("/", 1)[0] + "/" + database
    conn = await asyncpg.connect(url)
    try:
        await migrate(conn)
    finally:
        await conn.close()
    return url


async def total_rows(conn: Connection) -> int:
    counts = [await conn.fetchval(f"SELECT count(*) FROM {table}") for table in TABLES]
    return sum(counts)


async def collect(
    pool: asyncpg.Pool[asyncpg.Record], batch_size: int, concurrency: int
) -> tuple[float, int]:
    config = EngineConfig(batch_size=batch_size, protected_digests=(EMPTY_LAYER_DIGEST,))
    engine = Engine(PoolDatabase(pool), config)
    started = time.perf_counter()
    report = await engine.collect_all(
        causation_id="bench", purge_marked=True, concurrency=concurrency
    )
    return time.perf_counter() - started, report.total


async def throughput(repositories: int, batch_size: int, concurrency: int, pre_oci: bool) -> None:
    await fresh_database()
    async with asyncpg.create_pool(URL, min_size=2, max_size=engine_pool_size(concurrency)) as pool:
        async with pool.acquire() as conn:
            now = SystemClock().now_ms()
            shape = Shape(repositories=repositories, pre_oci=pre_oci)
            plan = plan_registry(shape, now_ms=now, seed=1)
            started = time.perf_counter()
            seeded = sum((await write(conn, plan)).values())
            seed_s = time.perf_counter() - started
            await give_garbage(conn, plan.run, now, seed=1)
            before = await total_rows(conn)
        seconds, objects = await collect(pool, batch_size, concurrency)
        async with pool.acquire() as conn:
            deleted = before - await total_rows(conn)
    print(f"seeded {seeded:,} rows in {seed_s:.2f}s ({seeded / seed_s:,.0f} rows/s)")
    print(
        f"collected {deleted:,} rows ({objects:,} objects) in {seconds:.2f}s: "
        f"{deleted / seconds:,.0f} rows/s, {objects / seconds:,.0f} objects/s "
        f"(batch {batch_size}, {concurrency} repositories at a time)"
    )


async def give_garbage(conn: Connection, run: str, now_ms: int, *, seed: int) -> None:
    """The throughput scenario's garbage in the seeded registry ``run``: 40% of the tags
    of both models expired, 10% of the repositories marked for deletion."""
    await expire_tags(conn, run, fraction=0.4, now_ms=now_ms, seed=seed)
    await expire_legacy_tags(conn, run, fraction=0.4, now_ms=now_ms, seed=seed)
    await delete_repositories(conn, run, fraction=0.1, seed=seed)
    await conn.execute("VACUUM ANALYZE")


@dataclass(frozen=True)
class Sized:
    """One collection of the growth scenario's garbage in a registry of ``rows`` rows."""

    rows: int
    objects: int
    seconds: float


async def garbage_vs_size(
    repositories: int,
    scale: int,
    batch_size: int,
    concurrency: int,
    pre_oci: bool,
    database: str = "registry_bench",
) -> list[Sized]:
    """The same garbage, collected from a registry and from one `scale` times larger."""
    timings = []
    for live_repositories in (repositories, repositories * scale):
        url = await fresh_database(database)
        async with asyncpg.create_pool(
            url, min_size=2, max_size=engine_pool_size(concurrency)
        ) as pool:
            async with pool.acquire() as conn:
                now = SystemClock().now_ms()
                live_shape = Shape(repositories=live_repositories, pre_oci=pre_oci)
                live = plan_registry(live_shape, now_ms=now, seed=2)
                await write(conn, live)
                # Old tag versions past their window are due in the live part too:
                # collect them first, so only the garbage under test remains.
            await collect(pool, batch_size, concurrency)
            async with pool.acquire() as conn:
                garbage = plan_registry(
                    Shape(repositories=repositories, namespaces=1, pre_oci=pre_oci),
                    now_ms=now,
                    seed=3,
                )
                await write(conn, garbage)
                await expire_tags(conn, garbage.run, fraction=0.5, now_ms=now, seed=3)
                await delete_repositories(conn, garbage.run, fraction=0.2, seed=3)
                await conn.execute("VACUUM ANALYZE")
                rows = await total_rows(conn)
            seconds, objects = await collect(pool, batch_size, concurrency)
            timings.append(Sized(rows, objects, seconds))
            print(f"registry of {rows:,} rows: {objects:,} objects collected in {seconds:.2f}s")
    base, larger = timings
    print(f"time ratio, {scale}x larger registry / base: {larger.seconds / base.seconds:.2f}")
    return timings


async def sweep_cost(repositories: int, batch_size: int, concurrency: int, pre_oci: bool) -> None:
    """One registry-wide orphan sweep: rows judged per second, and what it collected."""
    await fresh_database()
    async with asyncpg.create_pool(URL, min_size=2, max_size=engine_pool_size(concurrency)) as pool:
        async with pool.acquire() as conn:
            now = SystemClock().now_ms()
            shape = Shape(repositories=repositories, pre_oci=pre_oci)
            await write(conn, plan_registry(shape, now_ms=now, seed=4))
            # Orphans: the tags of 1% of the manifests, the links of 1% of the labels (with
            # the mapping rows naming them), and 1% more blobs, unlinked; then every row
            # past the grace period.
            await conn.execute(
                """
                DELETE FROM tag_to_repository_tag x USING tag t
                    WHERE x.tag_id = t.id AND t.manifest_id % 100 = 0;
                DELETE FROM tag WHERE manifest_id % 100 = 0;
                DELETE FROM tag_manifest_label_map x USING manifest_label ml
                    WHERE x.manifest_label_id = ml.id AND ml.label_id % 100 = 0;
                DELETE FROM manifest_label WHERE label_id % 100 = 0;
                INSERT INTO blob (digest, size)
                    SELECT 'sha256:orphan' || id, 1 FROM blob WHERE id % 100 = 0;
                INSERT INTO blob_placement (blob_id, location)
                    SELECT id, 'orphan' FROM blob WHERE digest LIKE 'sha256:orphan%';
                UPDATE manifest SET created_at = now() - interval '1 day';
                UPDATE label SET created_at = now() - interval '1 day';
                UPDATE image SET created_at = now() - interval '1 day';
                UPDATE blob SET created_at = now() - interval '1 day';
                """
            )
            await conn.execute("VACUUM ANALYZE")
            rows = await total_rows(conn)
        config = EngineConfig(batch_size=batch_size, protected_digests=(EMPTY_LAYER_DIGEST,))
        engine = Engine(PoolDatabase(pool), config)
        started = time.perf_counter()
        report = await engine.sweep_orphans(causation_id="bench", concurrency=concurrency)
        seconds = time.perf_counter() - started
    sweep = report.sweep
    print(
        f"orphan sweep of a registry of {rows:,} rows: {sweep.scanned:,} rows judged in"
        f" {sweep.seconds:.2f}s ({sweep.rows_per_s:,.0f} rows/s), {sweep.queued:,} orphans"
        f" queued; with their collection {report.total:,} objects removed in {seconds:.2f}s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repositories", type=int, default=600)
    parser.add_argument("--scale", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--sweep-repositories", type=int, default=None)
    parser.add_argument(
        "--oci-only", action="store_true", help="Seed no pre-OCI tag history (CONTRACT §3.1)."
    )
    args = parser.parse_args()
    configure_logging("warning")
    pre_oci = not args.oci_only
    asyncio.run(throughput(args.repositories, args.batch_size, args.concurrency, pre_oci))
    asyncio.run(
        garbage_vs_size(
            args.repositories // 10, args.scale, args.batch_size, args.concurrency, pre_oci
        )
    )
    asyncio.run(
        sweep_cost(
            args.sweep_repositories or args.repositories,
            args.batch_size,
            args.concurrency,
            pre_oci,
        )
    )


if __name__ == "__main__":
    main()
