"""Purging a repository marked for deletion: everything in it goes, nothing outside it."""

from __future__ import annotations

import asyncpg
import pytest

from collector.engine import Callbacks, Deferred, Engine, Finished
from collector.errors import RepositoryNotFound, RepositoryNotMarked
from events import LegacyImageRemoved, Removal, RepoPurged
from tests.registry import DAY_MS, NOW_MS, Registry, exists, outbox, snapshot

CAUSE = "purge-1"


async def build_full_repository(registry: Registry, repo: int) -> dict[str, int]:
    """A repository with every kind of object the collector knows, some of it shared."""
    shared_blob = await registry.blob(size=7)
    own_blob = await registry.blob(size=11)
    label = await registry.label()
    child = await registry.manifest(repo, blobs=(shared_blob,))
    index = await registry.manifest(repo, children=(child,), labels=(label,))
    subject = await registry.manifest(repo, blobs=(own_blob,))
    referrer = await registry.manifest(repo, subject=await registry.manifest_digest(subject))
    untagged = await registry.manifest(repo, blobs=(await registry.blob(),))
    await registry.tag(repo, index, "latest")
    await registry.tag(repo, subject, "pinned", immutable=True)
    await registry.tag(repo, referrer, "sig", hidden=True)
    await registry.expired_tag(repo, untagged, "old", immutable=True)
    await registry.tag(repo, subject, "recent", end_ms=NOW_MS - DAY_MS)  # inside its window
    root = await registry.image(repo, await registry.blob())
    leaf = await registry.image(repo, await registry.blob(), root)
    await registry.derived(leaf, await registry.blob())
    await registry.legacy(repo, subject, leaf)
    await registry.upload(repo, await registry.blob(), expires_ms=NOW_MS + DAY_MS)
    return {"shared_blob": shared_blob, "own_blob": own_blob, "label": label, "index": index}


async def test_purge_removes_everything_in_the_repository_then_the_repository(
    registry: Registry, engine: Engine, callbacks: Callbacks
) -> None:
    """Tags of every state (immutable too), manifests tagged or not, lists, referrers,
    legacy chains, uploads and labels go; blobs used elsewhere stay; then repo-purged."""
    ns = await registry.namespace()
    doomed = await registry.repository(ns, "doomed", state="marked_for_deletion")
    objects = await build_full_repository(registry, doomed)
    keeper = await registry.repository(ns, "keeper")
    kept_manifest = await registry.manifest(keeper, blobs=(objects["shared_blob"],))
    await registry.tag(keeper, kept_manifest)
    purged: list[tuple[str, str]] = []
    images: list[int] = []

    async def on_purged(removal: RepoPurged, causation_id: str) -> None:
        purged.append((removal.repository_path, causation_id))

    async def on_image(removal: LegacyImageRemoved, causation_id: str) -> None:
        images.append(removal.image_id)

    callbacks.on(RepoPurged, on_purged)
    callbacks.on(LegacyImageRemoved, on_image)

    report = await engine.purge(doomed, causation_id=CAUSE)

    conn = registry.conn
    assert not await exists(conn, "repository", doomed)
    for table in ("tag", "manifest", "image", "uploaded_blob", "manifest_blob", "app_tag"):
        query = f"SELECT count(*) FROM {table} WHERE repository_id = $1"
        assert await conn.fetchval(query, doomed) == 0, table
    assert not await exists(conn, "label", objects["label"])
    assert await exists(conn, "blob", objects["shared_blob"])
    assert not await exists(conn, "blob", objects["own_blob"])
    assert await exists(conn, "manifest", kept_manifest)
    assert report.removed["registry.gc.repo-purged"] == 1
    assert report.removed["registry.gc.manifest-removed"] == 5
    assert report.removed["registry.gc.tag-removed"] == 5
    assert report.removed["registry.gc.legacy-image-removed"] == 2
    assert report.incomplete == []
    assert report.outcomes == {doomed: Finished.PURGED}
    assert purged == [("acme/doomed", CAUSE)]
    assert len(images) == 2
    events = await outbox(conn)
    assert events[-1]["type"] == "registry.gc.repo-purged"
    assert events[-1]["data"] == {
        "namespace": "acme",
        "repository": "doomed",
        "repository_id": doomed,
    }
    assert await conn.fetchval("SELECT count(*) FROM gc.candidate") == 0


async def test_a_purge_that_finds_a_row_locked_is_deferred(
    registry: Registry, engine: Engine, db: asyncpg.Pool[asyncpg.Record]
) -> None:
    """A push holding one of the repository's tags locked keeps the repository from going:
    the purge removes the rest, names the repository incomplete, and says its request is
    deferred two seconds."""
    ns = await registry.namespace()
    doomed = await registry.repository(ns, "doomed", state="marked_for_deletion")
    await build_full_repository(registry, doomed)
    pushed = await registry.tag(doomed, await registry.manifest(doomed), "pushed")

    async with db.acquire() as push, push.transaction():
        await push.execute("SELECT 1 FROM tag WHERE id = $1 FOR UPDATE", pushed)
        report = await engine.purge(doomed, causation_id=CAUSE)

    assert report.incomplete == [doomed]
    assert report.outcomes == {doomed: Deferred(NOW_MS + 2_000, "rows were locked")}
    assert await exists(registry.conn, "repository", doomed)
    assert await registry.conn.fetchval("SELECT count(*) FROM tag") == 1


async def test_purge_refused_for_a_live_repository(registry: Registry, engine: Engine) -> None:
    """A repository not marked for deletion is never purged: nothing changes, no event."""
    ns = await registry.namespace()
    live = await registry.repository(ns, "live")
    await build_full_repository(registry, live)
    read_only = await registry.repository(ns, "frozen", state="read_only")
    before = await snapshot(registry.conn)

    with pytest.raises(RepositoryNotMarked):
        await engine.purge(live, causation_id=CAUSE)
    with pytest.raises(RepositoryNotMarked):
        await engine.purge(read_only, causation_id=CAUSE)
    with pytest.raises(RepositoryNotFound):
        await engine.purge(9999, causation_id=CAUSE)

    assert await snapshot(registry.conn) == before
    assert await outbox(registry.conn) == []


async def test_purge_of_an_application_repository_removes_linked_app_tags(
    registry: Registry, engine: Engine
) -> None:
    """Application repositories hold app_tag rows, linked to each other: all go."""
    ns = await registry.namespace()
    app = await registry.repository(ns, "chart", kind="application", state="marked_for_deletion")
    first = await registry.app_tag(app, "1.0")
    second = await registry.app_tag(app, "1.1", linked_tag_id=first)
    await registry.app_tag(app, "stable", linked_tag_id=second)

    report = await engine.purge(app, causation_id=CAUSE)

    assert await registry.conn.fetchval("SELECT count(*) FROM app_tag") == 0
    assert not await exists(registry.conn, "repository", app)
    assert dict(report.removed) == {"registry.gc.repo-purged": 1}


async def test_purge_twice_changes_nothing_the_second_time(
    registry: Registry, engine: Engine
) -> None:
    """Once purged, the repository is gone: a repeated purge finds nothing and emits nothing."""
    ns = await registry.namespace()
    doomed = await registry.repository(ns, "doomed", state="marked_for_deletion")
    await build_full_repository(registry, doomed)
    await engine.purge(doomed, causation_id=CAUSE)
    state, events = await snapshot(registry.conn), await outbox(registry.conn)

    with pytest.raises(RepositoryNotFound):
        await engine.purge(doomed, causation_id="purge-2")

    assert await snapshot(registry.conn) == state
    assert await outbox(registry.conn) == events


async def test_purge_of_more_roots_than_a_batch_takes_them_all(
    registry: Registry, engine: Engine
) -> None:
    """Tags of both models, uploads and application tags beyond one batch (the engine's
    is 50) of each go, batch after batch, and then the repository."""
    ns = await registry.namespace()
    doomed = await registry.repository(ns, "doomed", state="marked_for_deletion")
    manifest = await registry.manifest(doomed, blobs=(await registry.blob(),))
    image = await registry.image(doomed, await registry.blob())
    for i in range(120):
        await registry.tag(doomed, manifest, f"t{i}")
        await registry.repository_tag(doomed, image, f"r{i}")
        await registry.app_tag(doomed, f"a{i}")
    for _ in range(60):
        await registry.upload(doomed, await registry.blob(), expires_ms=NOW_MS + DAY_MS)

    report = await engine.purge(doomed, causation_id=CAUSE)

    assert report.outcomes == {doomed: Finished.PURGED}
    assert report.removed["registry.gc.tag-removed"] == 120
    assert report.removed["registry.gc.legacy-tag-removed"] == 120
    assert report.removed["registry.gc.blob-removed"] == 62
    assert not await exists(registry.conn, "repository", doomed)
    assert await registry.conn.fetchval("SELECT count(*) FROM gc.candidate") == 0


async def test_collect_all_with_purge_collects_and_purges_every_marked_repository(
    registry: Registry, engine: Engine, callbacks: Callbacks
) -> None:
    """collect_all(purge_marked=True) purges marked repositories and collects the rest."""
    ns = await registry.namespace()
    marked = [
        await registry.repository(ns, f"gone{i}", state="marked_for_deletion") for i in range(3)
    ]
    for repo in marked:
        await build_full_repository(registry, repo)
    live = await registry.repository(ns, "live")
    await registry.expired_tag(live, await registry.manifest(live))
    seen: list[str] = []

    async def every(removal: Removal, causation_id: str) -> None:
        seen.append(removal.event_type)

    callbacks.on(Removal, every)

    report = await engine.collect_all(causation_id=CAUSE, purge_marked=True)

    assert report.removed["registry.gc.repo-purged"] == 3
    assert report.repositories == 4
    assert await registry.conn.fetchval("SELECT count(*) FROM repository") == 1
    assert await registry.conn.fetchval("SELECT count(*) FROM manifest") == 0
    assert len(seen) == report.total
