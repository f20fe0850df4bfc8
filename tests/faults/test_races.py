"""Six writers pushing into the registry while the service collects it through Kafka:
links to manifests and blobs the service is deciding on, and new tags on them. The
race is real (some writes lose it and are refused by a foreign key); no write that
committed ever finds its target removed, and nothing dangles."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Callable
from pathlib import Path

import asyncpg

from collector.db.connector import Connection
from tests import pushes
from tests.faults.harness import (
    Final,
    Workload,
    assert_never_exited,
    assert_never_worked_twice_at_once,
    dispose,
    final,
    pipeline,
)

WRITERS = 6


async def test_six_writers_racing_the_service_never_lose_a_committed_write(
    workload: Workload, baseline: Final, fault_logs: Path
) -> None:
    run = await pipeline(workload, "raced", fault_logs)
    try:
        async with asyncpg.create_pool(run.url, min_size=WRITERS, max_size=WRITERS) as pool:
            async with pool.acquire() as conn:
                # Targets in repositories nobody asked to purge: a purge takes live tags too.
                manifests = await conn.fetch(
                    "SELECT m.id, m.repository_id FROM manifest m JOIN repository r"
                    " ON r.id = m.repository_id WHERE r.state = 'normal'"
                )
                blobs = [row["id"] for row in await conn.fetch("SELECT id FROM blob")]
                namespace = await conn.fetchval("SELECT min(id) FROM namespace")
                elsewhere = await conn.fetchval(
                    "INSERT INTO repository (namespace_id, name) VALUES ($1, 'raced') RETURNING id",
                    namespace,
                )
            linked: set[int] = set()  # blobs a committed push links to
            rescued: set[int] = set()  # manifests a committed tag names

            async def write(conn: Connection, rng: random.Random) -> Callable[[], None]:
                if rng.random() < 0.5:
                    blob = rng.choice(blobs)
                    await pushes.push(conn, elsewhere, blob)
                    return lambda: linked.add(blob)
                target = rng.choice(manifests)
                await pushes.retag(conn, target["repository_id"], target["id"])
                return lambda: rescued.add(target["id"])

            process = await run.start()
            served = asyncio.ensure_future(run.finish(process))
            races = await asyncio.gather(
                *(pushes.race(pool, served, write, seed=seed) for seed in range(WRITERS))
            )
        faulted = await final(run)
        reader = await asyncpg.connect(run.url)
        try:
            existing_blobs = {row["id"] for row in await reader.fetch("SELECT id FROM blob")}
            existing_manifests = {
                row["id"] for row in await reader.fetch("SELECT id FROM manifest")
            }
            rescued_blobs = {
                row["blob_id"]
                for row in await reader.fetch(
                    "SELECT blob_id FROM manifest_blob WHERE manifest_id = ANY($1)", list(rescued)
                )
            }
            events = [
                json.loads(row["event"])
                for row in await reader.fetch("SELECT event::text AS event FROM gc.outbox")
            ]
        finally:
            await reader.close()
    finally:
        await dispose(run)

    commits = sum(race.commits for _, race in races)
    refused = [constraint for _, race in races for constraint in race.refused]
    print(f"races: {commits} writes committed while the service ran, {len(refused)} refused")
    assert commits > 100, "the writers raced the service"
    assert refused, "some writes lost the race: the service removed their target first"
    # And some won it: manifests the undisturbed run removes live on, tagged meanwhile.
    assert rescued - baseline.rows["manifest"], "some pushes came before the service"
    assert set(refused) <= {"manifest_blob_blob_id_fkey", "tag_manifest_id_fkey"}
    assert linked <= existing_blobs
    assert rescued <= existing_manifests
    assert rescued_blobs <= existing_blobs
    assert faulted.dangling == []
    assert faulted.pending == 0
    assert faulted.candidates == 0
    assert set(faulted.published) == faulted.outbox_ids - set(faulted.set_aside)
    assert_never_exited(run)
    assert_never_worked_twice_at_once(run)
    removed_blobs = {
        e["data"]["blob_id"] for e in events if e["type"] == "registry.gc.blob-removed"
    }
    removed_manifests = {
        e["data"]["manifest_id"] for e in events if e["type"] == "registry.gc.manifest-removed"
    }
    assert removed_blobs, "the service removed blobs meanwhile"
    assert removed_blobs.isdisjoint(existing_blobs)
    assert removed_manifests.isdisjoint(existing_manifests)
