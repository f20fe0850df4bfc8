"""The orphan sweep: what nothing references and no event announced is collected once it is
older than the grace period, through the same candidates, re-checks and outbox; a sweep
cut short resumes where it stopped; a concurrent writer never loses what it references."""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import timedelta

import asyncpg

from collector.clock import SystemClock, ms_to_datetime
from collector.db.connector import Connection, PoolDatabase
from collector.engine import Engine, EngineConfig, sweep
from collector.verify import verify
from tests import pushes
from tests.registry import NOW_MS, FixedClock, Registry, exists, outbox

GRACE_S = 3600
OLD = ms_to_datetime(NOW_MS - 2 * GRACE_S * 1000)
YOUNG = ms_to_datetime(NOW_MS - 60_000)


async def created(conn: Connection, table: str, row_id: int, at: object) -> None:
    await conn.execute(f"UPDATE {table} SET created_at = $2 WHERE id = $1", row_id, at)


def sweeping_engine(db: asyncpg.Pool[asyncpg.Record], **config: int) -> Engine:
    settings = EngineConfig(
        batch_size=config.get("batch_size", 50),
        orphan_grace_s=GRACE_S,
        orphan_sweep_span=config.get("span", 10_000),
    )
    return Engine(PoolDatabase(db), settings, clock=FixedClock())


async def test_old_orphans_of_every_kind_go_with_events_young_and_live_ones_stay(
    registry: Registry, db: asyncpg.Pool[asyncpg.Record]
) -> None:
    """An untagged manifest (with its blob and label), a legacy chain, a label and a blob that
    nothing references are removed once past the grace period, each with its event; the same
    kinds inside the grace period, and everything referenced, stay."""
    conn = registry.conn
    ns = await registry.namespace()
    repo = await registry.repository(ns, "app")
    live_blob = await registry.blob()
    live = await registry.manifest(repo, blobs=(live_blob,))
    await registry.tag(repo, live, "latest")
    layer, label = await registry.blob(size=7), await registry.label()
    orphan = await registry.manifest(repo, blobs=(layer, live_blob), labels=(label,))
    root = await registry.image(repo, await registry.blob(size=11))
    leaf = await registry.image(repo, await registry.blob(size=13), root)
    lone_label, lone_blob = await registry.label("lone"), await registry.blob(size=17)
    old = {"manifest": [orphan], "image": [root, leaf], "label": [lone_label], "blob": [lone_blob]}
    for table, ids in old.items():
        for row_id in ids:
            await created(conn, table, row_id, OLD)
    young_manifest = await registry.manifest(repo)
    young_blob = await registry.blob()
    young_label = await registry.label("young")
    for table, row_id in [
        ("manifest", young_manifest),
        ("blob", young_blob),
        ("label", young_label),
        ("blob", layer),  # young, but freed by the old manifest: collected with it
    ]:
        await created(conn, table, row_id, YOUNG)

    report = await sweeping_engine(db).collect_all(causation_id="sweep-1", orphans=True)

    for table, ids in old.items():
        assert not any([await exists(conn, table, row_id) for row_id in ids]), table
    assert not await exists(conn, "blob", layer)
    assert not await exists(conn, "label", label)
    for table, row_id in [
        ("manifest", live),
        ("blob", live_blob),
        ("manifest", young_manifest),
        ("blob", young_blob),
        ("label", young_label),
    ]:
        assert await exists(conn, table, row_id), table
    assert dict(report.removed) == {
        "registry.gc.manifest-removed": 1,
        "registry.gc.legacy-image-removed": 2,
        "registry.gc.label-removed": 2,
        "registry.gc.blob-removed": 4,  # the layer, the two images' storage, the lone blob
    }
    assert report.sweep.queued == 4  # the manifest, the leaf image, the label, the blob
    assert report.sweep.scanned >= 12
    events = await outbox(conn)
    assert len(events) == report.total
    assert {e["causationid"] for e in events} == {"sweep-1"}

    found = await verify(conn, now_ms=NOW_MS, protected_digests=[], orphan_grace_s=GRACE_S)
    assert found.garbage == []
    assert found.queued == []
    assert {f.what: f.sample for f in found.grace} == {
        "unreferenced manifest": [young_manifest],
        "unreferenced blob": [young_blob],
        "unreferenced label": [young_label],
    }


async def test_a_sweep_of_named_repositories_judges_their_manifests_and_images_only(
    registry: Registry, db: asyncpg.Pool[asyncpg.Record]
) -> None:
    """collect NS/REPO with orphans: that repository's orphan manifests and images go (with
    what they free), another repository's and the registry's lone labels and blobs stay."""
    conn = registry.conn
    ns = await registry.namespace()
    mine, other = await registry.repository(ns, "mine"), await registry.repository(ns, "other")
    freed = await registry.blob()
    orphans = {
        "manifest": await registry.manifest(mine, blobs=(freed,)),
        "image": await registry.image(mine, await registry.blob()),
    }
    elsewhere = {
        "manifest": await registry.manifest(other),
        "image": await registry.image(other, await registry.blob()),
        "label": await registry.label(),
        "blob": await registry.blob(),
    }
    for table, row_id in [*orphans.items(), *elsewhere.items()]:
        await created(conn, table, row_id, OLD)

    report = await sweeping_engine(db).collect(mine, causation_id="mine-1", orphans=True)

    for table, row_id in orphans.items():
        assert not await exists(conn, table, row_id), table
    assert not await exists(conn, "blob", freed)
    for table, row_id in elsewhere.items():
        assert await exists(conn, table, row_id), table
    assert report.sweep.queued == 2
    assert {e["causationid"] for e in await outbox(conn)} == {"mine-1"}


async def test_a_sweep_cut_short_resumes_where_it_stopped(
    registry: Registry, db: asyncpg.Pool[asyncpg.Record]
) -> None:
    """Steps of a pass commit their place: after three steps (a sweep killed then), the next
    sweep judges only the rest of the table, and the pass ends with every orphan queued."""
    conn = registry.conn
    ns = await registry.namespace()
    repo = await registry.repository(ns, "app")
    manifests = [await registry.manifest(repo) for _ in range(40)]
    await conn.execute("UPDATE manifest SET created_at = $1", OLD)
    judgement = sweep.Judgement.at(ms_to_datetime(NOW_MS), grace_s=GRACE_S, protected_digests=[])
    async with db.acquire() as sweeper:
        for _ in range(3):
            async with sweeper.transaction():
                step = await sweep.step(
                    sweeper, kind="manifest", judgement=judgement, span=5, causation_id="killed"
                )
            assert (step.scanned, step.queued, step.done) == (5, 5, False)
    assert await conn.fetchval("SELECT last_id FROM gc.sweep WHERE kind = 'manifest'") == 15

    report = await sweeping_engine(db, span=5).sweep_orphans(causation_id="resumed")

    assert report.sweep.scanned == 25  # the 25 manifests the killed sweep had not reached
    assert not any([await exists(conn, "manifest", m) for m in manifests])
    causes = {e["data"]["manifest_id"]: e["causationid"] for e in await outbox(conn)}
    assert causes == {m: "killed" if i < 15 else "resumed" for i, m in enumerate(manifests)}
    place = await conn.fetchrow("SELECT * FROM gc.sweep WHERE kind = 'manifest'")
    assert place is not None
    assert place["until_id"] is None
    assert place["pass_finished_at"] is not None
    # The next sweep starts a new pass from the table's beginning.
    again = await sweeping_engine(db, span=5).sweep_orphans(causation_id="next")
    assert again.total == 0


async def test_sweep_cadence_is_kept_in_the_database(
    registry: Registry, db: asyncpg.Pool[asyncpg.Record]
) -> None:
    """A sweep is due until every table's pass finished within the cadence."""
    conn = registry.conn
    assert await sweep.is_due(conn, timedelta(hours=6))
    await sweeping_engine(db).sweep_orphans(causation_id="s")
    assert not await sweep.is_due(conn, timedelta(hours=6))
    assert await sweep.is_due(conn, timedelta(0))
    await conn.execute("UPDATE gc.sweep SET until_id = 10 WHERE kind = 'blob'")  # cut short
    assert await sweep.is_due(conn, timedelta(hours=6))


async def test_the_sweep_under_a_concurrent_writer_loses_nothing_referenced_or_young(
    registry: Registry, db: asyncpg.Pool[asyncpg.Record]
) -> None:
    """While a sweep collects hundreds of old orphans, a writer tags old orphan manifests,
    links old orphan blobs into new manifests and pushes fresh unreferenced blobs. Every
    write that committed keeps its target, nothing young is removed, and the writer saw its
    foreign keys refuse links to orphans the sweep had removed: the two really raced."""
    conn = registry.conn
    ns = await registry.namespace()
    old_repo, new_repo = await registry.repository(ns, "old"), await registry.repository(ns, "new")
    orphan_blobs = [await registry.blob() for _ in range(300)]
    orphan_manifests = [
        await registry.manifest(old_repo, blobs=(await registry.blob(),)) for _ in range(300)
    ]
    backdated = ms_to_datetime(SystemClock().now_ms() - 2 * GRACE_S * 1000)
    await conn.execute("UPDATE blob SET created_at = $1", backdated)
    await conn.execute("UPDATE manifest SET created_at = $1", backdated)
    engine = Engine(
        PoolDatabase(db),
        EngineConfig(batch_size=10, orphan_grace_s=GRACE_S, orphan_sweep_span=40),
    )
    rescued: set[int] = set()  # orphan manifests a committed tag references
    linked: set[int] = set()  # orphan blobs a committed manifest references
    fresh: set[int] = set()  # blobs pushed during the sweep, young and unreferenced

    async def write(conn: Connection, rng: random.Random) -> Callable[[], None]:
        roll = rng.random()
        if roll < 0.4:
            manifest = rng.choice(orphan_manifests)
            await pushes.retag(conn, old_repo, manifest)
            return lambda: rescued.add(manifest)
        if roll < 0.8:
            blob = rng.choice(orphan_blobs)
            await pushes.push(conn, new_repo, blob)
            return lambda: linked.add(blob)
        pushed = await pushes.fresh_blob(conn)
        return lambda: fresh.add(pushed)

    sweeping = engine.sweep_orphans(causation_id="race", concurrency=2)
    report, writer = await pushes.race(db, sweeping, write, seed=7)

    # Only writes that committed while the sweep ran count.
    assert writer.commits > 50, "the writer must have written while the sweep ran"
    assert writer.refused, "the writer must have raced the sweep: links to orphans refused"
    assert set(writer.refused) <= {"manifest_blob_blob_id_fkey", "tag_manifest_id_fkey"}
    assert report.total > 300, "the sweep must have removed orphans meanwhile"
    blobs = {row["id"] for row in await conn.fetch("SELECT id FROM blob")}
    manifests = {row["id"] for row in await conn.fetch("SELECT id FROM manifest")}
    assert rescued
    assert rescued <= manifests
    assert linked
    assert linked <= blobs
    assert fresh
    assert fresh <= blobs
    rescued_blobs = {
        row["blob_id"]
        for row in await conn.fetch(
            "SELECT blob_id FROM manifest_blob WHERE manifest_id = ANY($1)", list(rescued)
        )
    }
    assert rescued_blobs <= blobs
    events = await outbox(conn)
    removed_blobs = {e["data"]["blob_id"] for e in events if e["type"].endswith("blob-removed")}
    assert removed_blobs
    assert removed_blobs.isdisjoint(blobs)
    result = await verify(
        conn, now_ms=SystemClock().now_ms(), protected_digests=[], orphan_grace_s=GRACE_S
    )
    assert result.dangling == []
