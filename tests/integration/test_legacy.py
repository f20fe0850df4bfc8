"""The pre-OCI tag model (CONTRACT §3.1) collected with the OCI one: tags past their window
in seconds go with their tag manifests, what they held goes when nothing else holds it,
mapping rows go with whatever they name, purges remove both models."""

from __future__ import annotations

import asyncpg

from collector import publish
from collector.db.connector import PoolDatabase, RollbackDatabase
from collector.engine import Engine, EngineConfig
from collector.verify import verify
from tests.registry import DAY_MS, NOW_MS, WINDOW_S, FixedClock, Registry, exists, outbox, snapshot

CAUSE = "request-1"


async def chain(registry: Registry, repo: int, length: int, parent: int | None = None) -> list[int]:
    """A legacy image chain from root (first) to leaf (last), each with its own storage."""
    images = []
    for _ in range(length):
        parent = await registry.image(repo, await registry.blob(), parent)
        images.append(parent)
    return images


async def test_an_expired_pre_oci_tag_goes_with_its_tag_manifest_and_what_only_it_held(
    registry: Registry, engine: Engine
) -> None:
    """The tag, its tag manifest (with label rows, label-map rows and manifest mapping), the
    mapped manifest, the label and the image chain go, each with its event and the exact
    fields of CONTRACT §2.2."""
    conn = registry.conn
    ns = await registry.namespace("acme")
    repo = await registry.repository(ns, "web")
    layer = await registry.blob()
    manifest = await registry.manifest(repo, blobs=(layer,))
    label = await registry.label("legacy")
    images = await chain(registry, repo, 3)
    tag = await registry.expired_repository_tag(repo, images[-1], "v1")
    tag_manifest = await registry.tag_manifest(
        tag, manifest_id=manifest, labels=(label,), repository_id=repo
    )
    digest = await conn.fetchval("SELECT digest FROM tag_manifest WHERE id = $1", tag_manifest)
    docker_image_id = await conn.fetchval(
        "SELECT docker_image_id FROM image WHERE id = $1", images[-1]
    )

    report = await engine.collect(repo, causation_id=CAUSE)

    rows = await snapshot(conn)
    for table in (
        "repository_tag",
        "tag_manifest",
        "tag_manifest_to_manifest",
        "tag_manifest_label",
        "tag_manifest_label_map",
        "manifest",
        "image",
        "label",
        "blob",
    ):
        assert rows[table] == set(), table
    assert dict(report.removed) == {
        "registry.gc.legacy-tag-removed": 1,
        "registry.gc.legacy-manifest-removed": 1,
        "registry.gc.manifest-removed": 1,
        "registry.gc.legacy-image-removed": 3,
        "registry.gc.label-removed": 1,
        "registry.gc.blob-removed": 4,
    }
    by_type = {e["type"]: e for e in await outbox(conn)}
    tag_event = by_type["registry.gc.legacy-tag-removed"]
    assert tag_event["subject"] == "acme/web:v1"
    assert tag_event["key"] == "acme/web"
    assert tag_event["causationid"] == CAUSE
    assert tag_event["data"] == {
        "namespace": "acme",
        "repository": "web",
        "repository_id": repo,
        "tag": "v1",
        "repository_tag_id": tag,
        "docker_image_id": docker_image_id,
    }
    manifest_event = by_type["registry.gc.legacy-manifest-removed"]
    assert manifest_event["subject"] == f"acme/web@{digest}"
    assert manifest_event["key"] == "acme/web"
    assert manifest_event["data"] == {
        "namespace": "acme",
        "repository": "web",
        "repository_id": repo,
        "tag_manifest_id": tag_manifest,
        "digest": digest,
    }


async def test_two_pre_oci_tags_on_one_chain_expire_one_only_its_own_images_go(
    registry: Registry, engine: Engine
) -> None:
    """Two tags on branches of one chain: the expired tag's branch goes, the shared root and
    the live tag's branch stay."""
    conn = registry.conn
    ns = await registry.namespace()
    repo = await registry.repository(ns, "app")
    root = await chain(registry, repo, 2)
    live_branch = await chain(registry, repo, 2, root[-1])
    dead_branch = await chain(registry, repo, 3, root[-1])
    await registry.repository_tag(repo, live_branch[-1], "live")
    await registry.expired_repository_tag(repo, dead_branch[-1], "old")

    await engine.collect(repo, causation_id=CAUSE)

    images = (await snapshot(conn))["image"]
    assert images == {*root, *live_branch}


async def test_a_tag_in_another_repository_keeps_the_image_it_points_at(
    registry: Registry, engine: Engine
) -> None:
    """An image of one repository that a pre-OCI tag of another repository points at stays
    when its own repository's tag expires."""
    conn = registry.conn
    ns = await registry.namespace()
    mine, other = await registry.repository(ns, "mine"), await registry.repository(ns, "other")
    images = await chain(registry, mine, 2)
    await registry.expired_repository_tag(mine, images[-1], "old")
    await registry.repository_tag(other, images[-1], "borrowed")

    await engine.collect(mine, causation_id=CAUSE)

    assert (await snapshot(conn))["image"] == set(images)


async def test_a_100_image_chain_under_a_pre_oci_tag_unwinds_whole(
    registry: Registry, engine: Engine
) -> None:
    """A deep chain goes link by link, leaf to root, with every image's storage."""
    conn = registry.conn
    ns = await registry.namespace()
    repo = await registry.repository(ns, "deep")
    images = await chain(registry, repo, 100)
    await registry.expired_repository_tag(repo, images[-1])

    report = await engine.collect(repo, causation_id=CAUSE)

    assert report.removed["registry.gc.legacy-image-removed"] == 100
    assert report.removed["registry.gc.blob-removed"] == 100
    rows = await snapshot(conn)
    assert rows["image"] == rows["blob"] == set()


async def test_an_image_held_by_both_models_goes_when_both_let_go(
    registry: Registry, engine: Engine, clock: FixedClock
) -> None:
    """An image a pre-OCI tag and an OCI manifest_legacy_image both hold stays while either
    does, and goes when the second lets go."""
    conn = registry.conn
    ns = await registry.namespace()
    repo = await registry.repository(ns, "app")
    (image,) = await chain(registry, repo, 1)
    manifest = await registry.manifest(repo)
    await registry.legacy(repo, manifest, image)
    await registry.expired_repository_tag(repo, image)
    oci = await registry.tag(repo, manifest, "v1", end_ms=NOW_MS - DAY_MS)  # inside its window

    await engine.collect(repo, causation_id=CAUSE)
    assert await exists(conn, "image", image)

    clock.ms += WINDOW_S * 1000  # the OCI tag's window has passed
    await engine.collect(repo, causation_id=CAUSE)
    assert not await exists(conn, "tag", oci)
    assert not await exists(conn, "image", image)


async def test_a_mapped_manifest_stays_while_an_oci_tag_holds_it(
    registry: Registry, engine: Engine
) -> None:
    """A tag manifest maps to an OCI manifest an OCI tag also holds: the manifest stays; the
    one another tag manifest maps to, held by nothing else, goes."""
    conn = registry.conn
    ns = await registry.namespace()
    repo = await registry.repository(ns, "app")
    (image,) = await chain(registry, repo, 1)
    held = await registry.manifest(repo)
    await registry.tag(repo, held, "latest")
    alone = await registry.manifest(repo)
    first = await registry.expired_repository_tag(repo, image, "a")
    second = await registry.expired_repository_tag(repo, image, "b")
    await registry.tag_manifest(first, manifest_id=held)
    await registry.tag_manifest(second, manifest_id=alone)

    await engine.collect(repo, causation_id=CAUSE)

    assert await exists(conn, "manifest", held)
    assert not await exists(conn, "manifest", alone)
    assert (await snapshot(conn))["tag_manifest"] == set()


async def test_a_live_pre_oci_tag_keeps_its_mapped_manifest_and_its_labels(
    registry: Registry, engine: Engine
) -> None:
    """Stricter than the ancestor (CONTRACT §3.1): a live pre-OCI tag's tag manifest keeps
    the OCI manifest it maps to alive after the last OCI tag on it expired, and its label
    rows keep labels the OCI manifest also carried."""
    conn = registry.conn
    ns = await registry.namespace()
    repo = await registry.repository(ns, "app")
    (image,) = await chain(registry, repo, 1)
    shared = await registry.label("shared")
    manifest = await registry.manifest(repo, labels=(shared,))
    await registry.expired_tag(repo, manifest, "oci")
    live = await registry.repository_tag(repo, image, "live")
    await registry.tag_manifest(live, manifest_id=manifest, labels=(shared,), repository_id=repo)

    await engine.collect(repo, causation_id=CAUSE)

    assert await exists(conn, "manifest", manifest)
    assert await exists(conn, "label", shared)
    assert (await snapshot(conn))["tag"] == set()


async def test_a_label_shared_by_both_label_tables_goes_when_neither_carries_it(
    registry: Registry, engine: Engine
) -> None:
    """A label carried by an OCI manifest and by a tag manifest stays when the pre-OCI tag
    goes, and goes when the OCI manifest goes too."""
    conn = registry.conn
    ns = await registry.namespace()
    repo = await registry.repository(ns, "app")
    (image,) = await chain(registry, repo, 1)
    shared = await registry.label("shared")
    kept = await registry.manifest(repo, labels=(shared,))
    oci = await registry.tag(repo, kept, "latest")
    legacy = await registry.expired_repository_tag(repo, image)
    await registry.tag_manifest(legacy, labels=(shared,), repository_id=repo)

    await engine.collect(repo, causation_id=CAUSE)
    assert await exists(conn, "label", shared)

    await conn.execute("UPDATE tag SET lifetime_end_ms = 1 WHERE id = $1", oci)
    await engine.collect(repo, causation_id=CAUSE)
    assert not await exists(conn, "label", shared)
    assert (await snapshot(conn))["tag_manifest_label_map"] == set()


async def test_the_window_is_counted_in_seconds_and_hidden_tags_are_no_exception(
    registry: Registry, engine: Engine, clock: FixedClock
) -> None:
    """A pre-OCI tag inside its window (seconds) stays until the window passes, to the
    second; a hidden one is collected like any other; an alive hidden one stays."""
    conn = registry.conn
    ns = await registry.namespace(window_s=3600)
    repo = await registry.repository(ns, "app")
    (image,) = await chain(registry, repo, 1)
    now_s = NOW_MS // 1000
    inside = await registry.repository_tag(repo, image, "inside", end_ts=now_s - 3599)
    hidden = await registry.repository_tag(repo, image, "h", end_ts=now_s - 3600, hidden=True)
    alive = await registry.repository_tag(repo, image, "alive", hidden=True)

    await engine.collect(repo, causation_id=CAUSE)
    assert await exists(conn, "repository_tag", inside)
    assert not await exists(conn, "repository_tag", hidden)

    clock.ms += 1000
    await engine.collect(repo, causation_id=CAUSE)
    assert not await exists(conn, "repository_tag", inside)
    assert await exists(conn, "repository_tag", alive)
    assert await exists(conn, "image", image)


async def test_mapping_rows_go_with_the_oci_tag_or_manifest_they_name(
    registry: Registry, engine: Engine
) -> None:
    """An expired OCI tag takes its tag_to_repository_tag row and leaves the pre-OCI tag;
    a removed OCI manifest takes the label-map rows naming it or its label rows."""
    conn = registry.conn
    ns = await registry.namespace()
    repo = await registry.repository(ns, "app")
    (image,) = await chain(registry, repo, 1)
    label = await registry.label()
    manifest = await registry.manifest(repo, labels=(label,))
    oci = await registry.expired_tag(repo, manifest, "v1")
    legacy = await registry.repository_tag(repo, image, "v1")
    await registry.tag_link(repo, oci, legacy)
    other = await registry.repository_tag(repo, image, "v2")
    other_manifest = await registry.tag_manifest(other)
    manifest_label = await conn.fetchval(
        "SELECT id FROM manifest_label WHERE manifest_id = $1", manifest
    )
    await conn.execute(
        "INSERT INTO tag_manifest_label_map"
        " (tag_manifest_id, manifest_id, label_id, manifest_label_id) VALUES ($1, $2, $3, $4)",
        other_manifest,
        manifest,
        label,
        manifest_label,
    )

    await engine.collect(repo, causation_id=CAUSE)

    rows = await snapshot(conn)
    assert rows["tag_to_repository_tag"] == set()
    assert rows["tag_manifest_label_map"] == set()
    assert legacy in rows["repository_tag"]
    assert manifest not in rows["manifest"]
    assert label not in rows["label"]


async def test_purge_removes_both_models(registry: Registry, engine: Engine) -> None:
    """A repository marked for deletion holding OCI and pre-OCI tags, mapping rows, tag
    manifests with labels and shared images goes whole; another repository's rows stay."""
    conn = registry.conn
    ns = await registry.namespace()
    doomed = await registry.repository(ns, "doomed", state="marked_for_deletion")
    kept = await registry.repository(ns, "kept")
    label = await registry.label()
    manifest = await registry.manifest(doomed, labels=(label,))
    oci = await registry.tag(doomed, manifest, "latest")
    images = await chain(registry, doomed, 3)
    legacy = await registry.repository_tag(doomed, images[-1], "latest")
    await registry.tag_link(doomed, oci, legacy)
    await registry.tag_manifest(legacy, manifest_id=manifest, labels=(label,), repository_id=doomed)
    await registry.expired_repository_tag(doomed, images[0], "old")
    other = await registry.manifest(kept)
    await registry.tag(kept, other, "latest")
    kept_tag = await registry.repository_tag(kept, (await chain(registry, kept, 1))[0], "latest")

    report = await engine.purge(doomed, causation_id=CAUSE)

    rows = await snapshot(conn)
    assert doomed not in rows["repository"]
    assert report.removed["registry.gc.repo-purged"] == 1
    assert report.removed["registry.gc.legacy-tag-removed"] == 2
    assert report.removed["registry.gc.legacy-manifest-removed"] == 1
    assert rows["tag_manifest"] == rows["tag_manifest_label"] == set()
    assert rows["tag_to_repository_tag"] == rows["tag_manifest_label_map"] == set()
    assert rows["repository_tag"] == {kept_tag}
    assert rows["image"] == {await conn.fetchval("SELECT image_id FROM repository_tag")}
    assert other in rows["manifest"]


async def test_running_twice_and_a_dry_run_change_nothing(
    registry: Registry, db: asyncpg.Pool[asyncpg.Record], engine: Engine
) -> None:
    """A dry run (the engine in a rolled-back transaction) leaves every row; the real run
    then removes the pre-OCI garbage; a second run removes nothing more."""
    conn = registry.conn
    ns = await registry.namespace()
    repo = await registry.repository(ns, "app")
    images = await chain(registry, repo, 2)
    tag = await registry.expired_repository_tag(repo, images[-1])
    await registry.tag_manifest(tag, manifest_id=await registry.manifest(repo))
    before = await snapshot(conn)
    config = EngineConfig(batch_size=50)

    async with RollbackDatabase.session(db) as rollback:
        dry = await Engine(rollback, config, clock=FixedClock()).collect(repo, causation_id="d")
    assert dry.total == 7  # tag, tag manifest, manifest, two images and their blobs
    assert await snapshot(conn) == before
    assert await outbox(conn) == []

    first = await engine.collect(repo, causation_id=CAUSE)
    after = await snapshot(conn)
    second = await engine.collect(repo, causation_id=CAUSE)

    assert first.total == 7
    assert second.total == 0
    assert await snapshot(conn) == after


async def test_verify_scan_and_the_orphan_sweep_know_the_pre_oci_model(
    registry: Registry, db: asyncpg.Pool[asyncpg.Record]
) -> None:
    """verify lists a pre-OCI tag past its window as due garbage, scan asks for a sweep of
    its repository, and the orphan sweep leaves what only pre-OCI rows reference: an image
    under a live pre-OCI tag, a manifest a tag manifest maps to, a label a tag manifest
    carries."""
    conn = registry.conn
    ns = await registry.namespace("acme")
    repo = await registry.repository(ns, "web")
    (image,) = await chain(registry, repo, 1)
    manifest = await registry.manifest(repo)
    label = await registry.label()
    live = await registry.repository_tag(repo, image, "live")
    await registry.tag_manifest(live, manifest_id=manifest, labels=(label,), repository_id=repo)
    due = await registry.expired_repository_tag(repo, image, "old")
    await conn.execute("UPDATE manifest SET created_at = now() - interval '1 year'")
    await conn.execute("UPDATE label SET created_at = now() - interval '1 year'")
    await conn.execute("UPDATE image SET created_at = now() - interval '1 year'")

    found = await verify(conn, now_ms=NOW_MS, protected_digests=[], orphan_grace_s=3600)
    scanned = await publish.scan(conn, NOW_MS)
    engine = Engine(PoolDatabase(db), EngineConfig(), clock=FixedClock())
    report = await engine.collect_all(causation_id=CAUSE, orphans=True)

    assert found.ok
    assert [(f.what, f.sample) for f in found.garbage] == [("legacy tag past its window", [due])]
    assert [(type(r).__name__, r.repository_id) for r in scanned.requests] == [("RepoSweep", repo)]
    assert scanned.unrequestable == []
    assert dict(report.removed) == {"registry.gc.legacy-tag-removed": 1}
    for table, row_id in [("image", image), ("manifest", manifest), ("label", label)]:
        assert await exists(conn, table, row_id), table
    after = await verify(conn, now_ms=NOW_MS, protected_digests=[], orphan_grace_s=3600)
    assert after.garbage == []
