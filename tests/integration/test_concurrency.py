"""Pushes racing the collector: foreign keys and row locks decide every race, and no
committed row ever references something the collector removed."""

from __future__ import annotations

import random
from collections.abc import Callable

import asyncpg

from collector.db.connector import Connection, PoolDatabase
from collector.engine import Engine, EngineConfig
from collector.verify import verify
from tests import pushes
from tests.registry import NOW_MS, FixedClock, Registry, outbox


async def test_writer_linking_blobs_and_retagging_while_the_engine_collects(
    registry: Registry, db: asyncpg.Pool[asyncpg.Record]
) -> None:
    """A writer links the doomed repository's blobs into new manifests elsewhere and re-tags
    doomed manifests while they are collected: every write either commits and keeps its
    target alive, or fails its foreign-key check; nothing dangles."""
    ns = await registry.namespace()
    doomed = await registry.repository(ns, "doomed")
    elsewhere = await registry.repository(ns, "pushes")
    pool_blobs = [await registry.blob() for _ in range(150)]
    manifests = []
    for _ in range(300):
        manifest = await registry.manifest(doomed, blobs=tuple(random.sample(pool_blobs, 3)))
        await registry.expired_tag(doomed, manifest, f"t{manifest}")
        manifests.append(manifest)

    engine = Engine(PoolDatabase(db), EngineConfig(batch_size=10), clock=FixedClock())
    linked: set[int] = set()  # blobs a committed push references
    rescued: set[int] = set()  # manifests a committed tag references

    async def write(conn: Connection, rng: random.Random) -> Callable[[], None]:
        if rng.random() < 0.5:
            blob = rng.choice(pool_blobs)
            await pushes.push(conn, elsewhere, blob)
            return lambda: linked.add(blob)
        target = rng.choice(manifests)
        await pushes.retag(conn, doomed, target)
        return lambda: rescued.add(target)

    _, writer = await pushes.race(db, engine.collect(doomed, causation_id="race"), write, seed=1)

    conn = registry.conn
    refused = writer.refused
    assert writer.commits > 20, "the writer must have raced the engine"
    existing_blobs = {row["id"] for row in await conn.fetch("SELECT id FROM blob")}
    existing_manifests = {row["id"] for row in await conn.fetch("SELECT id FROM manifest")}
    assert linked <= existing_blobs
    assert rescued <= existing_manifests
    rescued_blobs = {
        row["blob_id"]
        for row in await conn.fetch(
            "SELECT blob_id FROM manifest_blob WHERE manifest_id = ANY($1)", list(rescued)
        )
    }
    assert rescued_blobs <= existing_blobs
    assert set(refused) <= {"manifest_blob_blob_id_fkey", "tag_manifest_id_fkey"}
    events = await outbox(conn)
    removed_blobs = {e["data"]["blob_id"] for e in events if e["type"].endswith("blob-removed")}
    removed_manifests = {
        e["data"]["manifest_id"] for e in events if e["type"].endswith("manifest-removed")
    }
    assert removed_blobs, "the engine must have removed blobs meanwhile"
    assert removed_blobs.isdisjoint(existing_blobs)
    assert removed_manifests.isdisjoint(existing_manifests)
    result = await verify(conn, now_ms=NOW_MS, protected_digests=[], orphan_grace_s=3600)
    assert result.dangling == []


async def test_writer_re_tagging_pre_oci_images_and_mapping_manifests_while_collected(
    registry: Registry, db: asyncpg.Pool[asyncpg.Record]
) -> None:
    """The pre-OCI model under the same race: expired pre-OCI tags are collected with their
    tag manifests while a writer puts new pre-OCI tags on their images and maps new tag
    manifests to their manifests. Every write that committed keeps its target; the others
    failed their foreign-key check, and some did: the two really raced."""
    ns = await registry.namespace()
    doomed = await registry.repository(ns, "doomed")
    anchor = await registry.image(doomed, await registry.blob())
    await registry.repository_tag(doomed, anchor, "anchor")
    images, manifests = [], []
    for _ in range(300):
        image = await registry.image(doomed, await registry.blob())
        manifest = await registry.manifest(doomed, blobs=(await registry.blob(),))
        tag = await registry.expired_repository_tag(doomed, image, f"t{image}")
        await registry.tag_manifest(tag, manifest_id=manifest)
        images.append(image)
        manifests.append(manifest)

    engine = Engine(PoolDatabase(db), EngineConfig(batch_size=10), clock=FixedClock())
    kept_images: set[int] = set()
    kept_manifests: set[int] = set()

    async def write(conn: Connection, rng: random.Random) -> Callable[[], None]:
        if rng.random() < 0.5:
            image = rng.choice(images)
            await pushes.legacy_retag(conn, doomed, image)
            return lambda: kept_images.add(image)
        manifest = rng.choice(manifests)
        await pushes.legacy_retag(conn, doomed, anchor, manifest)
        return lambda: kept_manifests.add(manifest)

    report, writer = await pushes.race(
        db, engine.collect(doomed, causation_id="race"), write, seed=2
    )

    conn = registry.conn
    assert writer.commits > 20, "the writer must have raced the engine"
    assert writer.refused, "some links must have lost the race to the engine"
    assert set(writer.refused) <= {
        "repository_tag_image_id_fkey",
        "tag_manifest_to_manifest_manifest_id_fkey",
    }
    assert report.removed["registry.gc.legacy-tag-removed"] == 300
    existing_images = {row["id"] for row in await conn.fetch("SELECT id FROM image")}
    existing_manifests = {row["id"] for row in await conn.fetch("SELECT id FROM manifest")}
    assert kept_images <= existing_images
    assert kept_manifests <= existing_manifests
    result = await verify(conn, now_ms=NOW_MS, protected_digests=[], orphan_grace_s=3600)
    assert result.dangling == []
