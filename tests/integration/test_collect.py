"""Collecting a repository: what is due goes, with everything it freed, and nothing else."""

from __future__ import annotations

import asyncpg

from collector.engine import Cause, Deferred, Engine, ExpiredTag, Finished, candidates
from collector.engine.context import WholeRegistry
from tests.registry import DAY_MS, NOW_MS, WINDOW_S, Registry, exists, outbox, snapshot

CAUSE = "request-1"


async def test_one_expired_tag_frees_its_manifest_and_blobs(
    registry: Registry, engine: Engine
) -> None:
    """The simplest case: the tag, its manifest, its blobs and label all go, with events."""
    ns = await registry.namespace()
    repo = await registry.repository(ns, "app")
    config, layer = await registry.blob(size=10), await registry.blob(size=20)
    label = await registry.label()
    manifest = await registry.manifest(repo, blobs=(config, layer), labels=(label,))
    tag = await registry.expired_tag(repo, manifest)

    report = await engine.collect(repo, causation_id=CAUSE)

    conn = registry.conn
    assert not await exists(conn, "tag", tag)
    assert not await exists(conn, "manifest", manifest)
    assert not await exists(conn, "blob", config)
    assert not await exists(conn, "blob", layer)
    assert not await exists(conn, "label", label)
    assert report.bytes_freed == 30
    assert dict(report.removed) == {
        "registry.gc.tag-removed": 1,
        "registry.gc.manifest-removed": 1,
        "registry.gc.blob-removed": 2,
        "registry.gc.label-removed": 1,
    }
    events = await outbox(conn)
    assert [e["type"] for e in events].count("registry.gc.blob-removed") == 2
    assert {e["causationid"] for e in events} == {CAUSE}
    assert await conn.fetchval("SELECT count(*) FROM gc.candidate") == 0


async def test_removal_events_carry_the_contract_fields(registry: Registry, engine: Engine) -> None:
    """Every event is a CloudEvent with the exact data fields and key of CONTRACT §2.2."""
    ns = await registry.namespace("acme")
    repo = await registry.repository(ns, "web")
    blob = await registry.blob(size=5, locations=("s3-eu", "s3-us"))
    manifest = await registry.manifest(repo, blobs=(blob,))
    digest = await registry.manifest_digest(manifest)
    tag = await registry.expired_tag(repo, manifest, "v1")

    await engine.collect(repo, causation_id=CAUSE)

    by_type = {e["type"]: e for e in await outbox(registry.conn)}
    tag_event = by_type["registry.gc.tag-removed"]
    assert tag_event["key"] == "acme/web"
    assert tag_event["subject"] == "acme/web:v1"
    assert tag_event["data"] == {
        "namespace": "acme",
        "repository": "web",
        "repository_id": repo,
        "tag": "v1",
        "tag_id": tag,
        "manifest_digest": digest,
    }
    manifest_event = by_type["registry.gc.manifest-removed"]
    assert manifest_event["subject"] == f"acme/web@{digest}"
    assert manifest_event["data"] == {
        "namespace": "acme",
        "repository": "web",
        "repository_id": repo,
        "manifest_id": manifest,
        "digest": digest,
        "media_type": "application/vnd.oci.image.manifest.v1+json",
    }
    blob_event = by_type["registry.gc.blob-removed"]
    blob_digest = blob_event["data"]["digest"]
    assert blob_event["key"] == blob_digest == blob_event["subject"]
    assert blob_event["data"] == {
        "blob_id": blob,
        "digest": blob_digest,
        "size": 5,
        "locations": ["s3-eu", "s3-us"],
    }
    for event in by_type.values():
        assert event["specversion"] == "1.0"
        assert event["datacontenttype"] == "application/json"
        assert event["source"] == "/registry-gc/collector"
        assert event["causationid"] == CAUSE
        assert event["time"].endswith("Z") or "+00:00" in event["time"]


async def test_two_tags_on_one_manifest_expiring_one_removes_only_that_tag(
    registry: Registry, engine: Engine
) -> None:
    """The other tag keeps the manifest and everything under it alive."""
    ns = await registry.namespace()
    repo = await registry.repository(ns, "app")
    blob = await registry.blob()
    manifest = await registry.manifest(repo, blobs=(blob,))
    old = await registry.expired_tag(repo, manifest, "old")
    live = await registry.tag(repo, manifest, "latest")
    before = await snapshot(registry.conn)

    report = await engine.collect(repo, causation_id=CAUSE)

    after = await snapshot(registry.conn)
    assert before["tag"] - after["tag"] == {old}
    assert live in after["tag"]
    assert {k: v for k, v in after.items() if k != "tag"} == {
        k: v for k, v in before.items() if k != "tag"
    }
    assert dict(report.removed) == {"registry.gc.tag-removed": 1}


async def test_manifests_sharing_config_and_layers_free_only_unshared_blobs(
    registry: Registry, engine: Engine
) -> None:
    """Blobs another manifest still lists stay; the expired manifest's own layer goes."""
    ns = await registry.namespace()
    repo = await registry.repository(ns, "app")
    config, base, own = await registry.blob(), await registry.blob(), await registry.blob()
    expired = await registry.manifest(repo, blobs=(config, base, own))
    kept = await registry.manifest(repo, blobs=(config, base))
    await registry.expired_tag(repo, expired)
    await registry.tag(repo, kept, "latest")

    await engine.collect(repo, causation_id=CAUSE)

    conn = registry.conn
    assert not await exists(conn, "manifest", expired)
    assert await exists(conn, "manifest", kept)
    assert await exists(conn, "blob", config)
    assert await exists(conn, "blob", base)
    assert not await exists(conn, "blob", own)


async def test_blob_shared_across_repositories_and_namespaces_stays(
    registry: Registry, engine: Engine
) -> None:
    """Blobs are global: a reference from another namespace's repository keeps one."""
    acme, other = await registry.namespace("acme"), await registry.namespace("other")
    repo_a = await registry.repository(acme, "a")
    repo_b = await registry.repository(other, "b")
    shared, alone = await registry.blob(), await registry.blob()
    manifest_a = await registry.manifest(repo_a, blobs=(shared, alone))
    manifest_b = await registry.manifest(repo_b, blobs=(shared,))
    await registry.expired_tag(repo_a, manifest_a)
    await registry.tag(repo_b, manifest_b)

    await engine.collect(repo_a, causation_id=CAUSE)

    conn = registry.conn
    assert await exists(conn, "blob", shared)
    assert not await exists(conn, "blob", alone)
    assert await exists(conn, "manifest", manifest_b)


async def test_time_machine_window_decides_when_a_tag_is_due(
    registry: Registry, engine: Engine
) -> None:
    """A dead tag inside its namespace's window stays, and keeps its manifest; past it, it goes."""
    strict = await registry.namespace("strict", window_s=0)
    lenient = await registry.namespace("lenient", window_s=WINDOW_S)
    repo_strict = await registry.repository(strict, "r")
    repo_lenient = await registry.repository(lenient, "r")
    ended = NOW_MS - DAY_MS  # ended yesterday
    manifest_strict = await registry.manifest(repo_strict)
    manifest_lenient = await registry.manifest(repo_lenient)
    tag_strict = await registry.tag(repo_strict, manifest_strict, "t", end_ms=ended)
    tag_lenient = await registry.tag(repo_lenient, manifest_lenient, "t", end_ms=ended)
    # Exactly at the window's end counts as elapsed.
    edge = await registry.tag(
        repo_lenient, manifest_lenient, "edge", end_ms=NOW_MS - WINDOW_S * 1000
    )

    await engine.collect(repo_strict, causation_id=CAUSE)
    await engine.collect(repo_lenient, causation_id=CAUSE)

    conn = registry.conn
    assert not await exists(conn, "tag", tag_strict)
    assert not await exists(conn, "manifest", manifest_strict)
    assert await exists(conn, "tag", tag_lenient)
    assert not await exists(conn, "tag", edge)
    assert await exists(conn, "manifest", manifest_lenient)


async def test_hidden_and_alive_tags_keep_their_manifests(
    registry: Registry, engine: Engine
) -> None:
    """Any tag row pointing at a manifest keeps it: alive, hidden, or dead inside its window."""
    ns = await registry.namespace()
    repo = await registry.repository(ns, "app")
    hidden = await registry.manifest(repo)
    alive = await registry.manifest(repo)
    await registry.tag(repo, hidden, "h", hidden=True)
    await registry.tag(repo, alive, "a")
    before = await snapshot(registry.conn)

    report = await engine.collect(repo, causation_id=CAUSE)

    assert report.total == 0
    assert await snapshot(registry.conn) == before


async def test_immutable_expired_tag_is_never_collected(registry: Registry, engine: Engine) -> None:
    """Immutable tags survive expiry, and so does what they point at."""
    ns = await registry.namespace()
    repo = await registry.repository(ns, "app")
    blob = await registry.blob()
    manifest = await registry.manifest(repo, blobs=(blob,))
    tag = await registry.expired_tag(repo, manifest, immutable=True)

    report = await engine.collect(repo, causation_id=CAUSE)

    assert report.total == 0
    assert await exists(registry.conn, "tag", tag)
    assert await exists(registry.conn, "blob", blob)


async def test_uploads_keep_blobs_until_they_expire(registry: Registry, engine: Engine) -> None:
    """An unexpired upload keeps its blob; an expired one is removed and frees its blob."""
    ns = await registry.namespace()
    repo = await registry.repository(ns, "app")
    fresh_blob, stale_blob = await registry.blob(), await registry.blob()
    fresh = await registry.upload(repo, fresh_blob, expires_ms=NOW_MS + DAY_MS)
    stale = await registry.upload(repo, stale_blob, expires_ms=NOW_MS - DAY_MS)

    report = await engine.collect(repo, causation_id=CAUSE)

    conn = registry.conn
    assert await exists(conn, "uploaded_blob", fresh)
    assert await exists(conn, "blob", fresh_blob)
    assert not await exists(conn, "uploaded_blob", stale)
    assert not await exists(conn, "blob", stale_blob)
    assert dict(report.removed) == {"registry.gc.blob-removed": 1}


async def test_fresh_upload_elsewhere_keeps_a_freed_blob_and_expired_ones_go_with_it(
    registry: Registry, engine: Engine
) -> None:
    """A blob freed here but uploaded (unexpired) in another repository stays; when a blob
    goes, expired uploads in other repositories that still name it go too."""
    ns = await registry.namespace()
    repo, other = await registry.repository(ns, "a"), await registry.repository(ns, "b")
    kept_blob, freed_blob = await registry.blob(), await registry.blob()
    manifest = await registry.manifest(repo, blobs=(kept_blob, freed_blob))
    await registry.expired_tag(repo, manifest)
    await registry.upload(other, kept_blob, expires_ms=NOW_MS + DAY_MS)
    stale_elsewhere = await registry.upload(other, freed_blob, expires_ms=NOW_MS - DAY_MS)

    await engine.collect(repo, causation_id=CAUSE)

    conn = registry.conn
    assert await exists(conn, "blob", kept_blob)
    assert not await exists(conn, "blob", freed_blob)
    assert not await exists(conn, "uploaded_blob", stale_elsewhere)


async def test_placeholder_and_protected_blobs_are_never_collected(
    registry: Registry, engine: Engine
) -> None:
    """No placement means a proxy-cache placeholder; a protected digest is never removed."""
    ns = await registry.namespace()
    repo = await registry.repository(ns, "app")
    placeholder = await registry.blob(locations=())
    protected = await registry.blob(digest="sha256:" + "e" * 64)  # protected in the fixture
    ordinary = await registry.blob()
    manifest = await registry.manifest(repo, blobs=(placeholder, protected, ordinary))
    await registry.expired_tag(repo, manifest)

    await engine.collect(repo, causation_id=CAUSE)

    conn = registry.conn
    assert not await exists(conn, "manifest", manifest)
    assert await exists(conn, "blob", placeholder)
    assert await exists(conn, "blob", protected)
    assert not await exists(conn, "blob", ordinary)


async def test_manifest_list_children_shared_or_tagged_stay(
    registry: Registry, engine: Engine
) -> None:
    """A list's child goes with it unless another list names it or a tag points at it."""
    ns = await registry.namespace()
    repo = await registry.repository(ns, "multiarch")
    only = await registry.manifest(repo, blobs=(await registry.blob(),))
    shared = await registry.manifest(repo)
    tagged = await registry.manifest(repo)
    expired_list = await registry.manifest(repo, children=(only, shared, tagged))
    other_list = await registry.manifest(repo, children=(shared,))
    await registry.expired_tag(repo, expired_list)
    await registry.tag(repo, other_list, "stable")
    await registry.tag(repo, tagged, "amd64")

    await engine.collect(repo, causation_id=CAUSE)

    conn = registry.conn
    assert not await exists(conn, "manifest", expired_list)
    assert not await exists(conn, "manifest", only)
    assert await exists(conn, "manifest", shared)
    assert await exists(conn, "manifest", tagged)
    assert await exists(conn, "manifest", other_list)


async def test_manifest_list_larger_than_a_batch_with_lower_id_children_finishes(
    registry: Registry, engine: Engine
) -> None:
    """More children than a batch (50 here), created before the list: the fixpoint still
    removes them all and ends (Quay looped forever on this, PROJQUAY-11661)."""
    ns = await registry.namespace()
    repo = await registry.repository(ns, "big")
    children = [await registry.manifest(repo, blobs=(await registry.blob(),)) for _ in range(130)]
    index = await registry.manifest(repo, children=tuple(children))
    await registry.expired_tag(repo, index)

    report = await engine.collect(repo, causation_id=CAUSE)

    assert report.removed["registry.gc.manifest-removed"] == 131
    assert report.removed["registry.gc.blob-removed"] == 130
    assert await registry.conn.fetchval("SELECT count(*) FROM manifest") == 0


async def test_shared_label_stays_while_another_manifest_carries_it(
    registry: Registry, engine: Engine
) -> None:
    """Labels are shared rows: one goes only when no manifest carries it."""
    ns = await registry.namespace()
    repo = await registry.repository(ns, "app")
    shared, own = await registry.label("team", "a"), await registry.label("build", "7")
    expired = await registry.manifest(repo, labels=(shared, own))
    kept = await registry.manifest(repo, labels=(shared,))
    await registry.expired_tag(repo, expired)
    await registry.tag(repo, kept)

    report = await engine.collect(repo, causation_id=CAUSE)

    assert await exists(registry.conn, "label", shared)
    assert not await exists(registry.conn, "label", own)
    assert report.removed["registry.gc.label-removed"] == 1
    [event] = [e for e in await outbox(registry.conn) if e["type"].endswith("label-removed")]
    assert event["data"] == {"label_id": own, "key": "build"}
    assert event["subject"] == f"label/{own}"


async def test_referrers_cascade_with_their_subject(registry: Registry, engine: Engine) -> None:
    """An untagged referrer goes with its subject; a tagged one stays; one in another
    repository naming the same digest is not touched."""
    ns = await registry.namespace()
    repo, other = await registry.repository(ns, "app"), await registry.repository(ns, "other")
    subject = await registry.manifest(repo)
    digest = await registry.manifest_digest(subject)
    signature = await registry.manifest(repo, subject=digest, blobs=(await registry.blob(),))
    sbom = await registry.manifest(repo, subject=digest)
    tagged_referrer = await registry.manifest(repo, subject=digest)
    elsewhere = await registry.manifest(other, subject=digest)
    await registry.tag(repo, tagged_referrer, "sbom-pinned")
    await registry.expired_tag(repo, subject)

    await engine.collect(repo, causation_id=CAUSE)

    conn = registry.conn
    assert not await exists(conn, "manifest", subject)
    assert not await exists(conn, "manifest", signature)
    assert not await exists(conn, "manifest", sbom)
    assert await exists(conn, "manifest", tagged_referrer)
    assert await exists(conn, "manifest", elsewhere)


async def test_referrers_never_keep_their_subject_alive_and_live_while_it_lives(
    registry: Registry, engine: Engine
) -> None:
    """An expired subject goes despite its referrer; an untagged referrer of a live
    subject stays even when the tag that pointed at it expires."""
    ns = await registry.namespace()
    repo = await registry.repository(ns, "app")
    live_subject = await registry.manifest(repo)
    await registry.tag(repo, live_subject, "latest")
    live_digest = await registry.manifest_digest(live_subject)
    referrer_of_live = await registry.manifest(repo, subject=live_digest)
    await registry.expired_tag(repo, referrer_of_live, "sig")

    await engine.collect(repo, causation_id=CAUSE)

    assert await exists(registry.conn, "manifest", referrer_of_live)
    assert await exists(registry.conn, "manifest", live_subject)


async def test_legacy_chain_of_100_with_a_branch_and_derived_storage(
    registry: Registry, engine: Engine
) -> None:
    """A 100-image chain unwinds leaf to root, except the ancestors of a branch that a
    live manifest still uses; derived storage goes with its image."""
    ns = await registry.namespace()
    repo = await registry.repository(ns, "legacy")
    chain: list[int] = []
    storages: list[int] = []
    parent = None
    for _ in range(100):
        storage = await registry.blob()
        parent = await registry.image(repo, storage, parent)
        chain.append(parent)
        storages.append(storage)
    derivative = await registry.blob()
    await registry.derived(chain[-1], derivative)
    # A branch off image 40 (index 39), used by a live manifest: keeps images 1..40.
    branch = await registry.image(repo, await registry.blob(), chain[39])
    live = await registry.manifest(repo)
    await registry.legacy(repo, live, branch)
    await registry.tag(repo, live, "live")
    expired = await registry.manifest(repo)
    await registry.legacy(repo, expired, chain[-1])
    await registry.expired_tag(repo, expired)

    report = await engine.collect(repo, causation_id=CAUSE)

    conn = registry.conn
    remaining = {row["id"] for row in await conn.fetch("SELECT id FROM image")}
    assert remaining == {*chain[:40], branch}
    assert report.removed["registry.gc.legacy-image-removed"] == 60
    assert not await exists(conn, "blob", derivative)
    blobs = {row["id"] for row in await conn.fetch("SELECT id FROM blob")}
    assert blobs.isdisjoint(storages[40:])
    assert blobs.issuperset(storages[:40])
    assert await conn.fetchval("SELECT count(*) FROM derived_image_storage") == 0


async def test_running_twice_changes_nothing(registry: Registry, engine: Engine) -> None:
    """A second collection finds nothing: no row removed, no event written."""
    ns = await registry.namespace()
    repo = await registry.repository(ns, "app")
    manifest = await registry.manifest(repo, blobs=(await registry.blob(),))
    await registry.expired_tag(repo, manifest)
    await registry.tag(repo, await registry.manifest(repo), "latest")
    await engine.collect(repo, causation_id=CAUSE)
    state = await snapshot(registry.conn)
    events = await outbox(registry.conn)

    report = await engine.collect(repo, causation_id="request-2")

    assert report.total == 0
    assert await snapshot(registry.conn) == state
    assert await outbox(registry.conn) == events


async def test_linked_tag_is_unlinked_when_its_target_expires(
    registry: Registry, engine: Engine
) -> None:
    """A tag linking an expired tag loses the link, not its life."""
    ns = await registry.namespace()
    repo = await registry.repository(ns, "app")
    manifest = await registry.manifest(repo)
    target = await registry.expired_tag(repo, manifest)
    linking = await registry.tag(repo, manifest, "alias", linked_tag_id=target)

    await engine.collect(repo, causation_id=CAUSE)

    conn = registry.conn
    assert not await exists(conn, "tag", target)
    assert await conn.fetchval("SELECT linked_tag_id FROM tag WHERE id = $1", linking) is None
    assert await exists(conn, "manifest", manifest)


async def test_collect_all_covers_every_repository_with_due_work(
    registry: Registry, engine: Engine, db: asyncpg.Pool[asyncpg.Record]
) -> None:
    """collect_all finds the repositories with due tags or expired uploads and collects them."""
    ns = await registry.namespace()
    repos = [await registry.repository(ns, f"r{i}") for i in range(6)]
    for repo in repos:
        await registry.expired_tag(repo, await registry.manifest(repo))
    idle = await registry.repository(ns, "idle")
    await registry.tag(idle, await registry.manifest(idle))

    report = await engine.collect_all(causation_id=CAUSE, concurrency=3)

    assert report.repositories == 6
    assert report.removed["registry.gc.manifest-removed"] == 6
    assert await registry.conn.fetchval("SELECT count(*) FROM manifest") == 1


async def test_collecting_several_repositories_together_keeps_each_one_s_cause(
    registry: Registry, engine: Engine
) -> None:
    """collect_many collects several repositories in one context; every removal, and
    every candidate it queues (a manifest's layer, an expired upload's blob), names the
    request of its own repository. A repository not named is left alone, due or not."""
    ns = await registry.namespace()
    requests: dict[int, str] = {}
    cause_of_blob: dict[str, str] = {}
    for name in ("web", "api", "ops"):
        repo = await registry.repository(ns, name)
        layer, uploaded = await registry.blob(), await registry.blob()
        await registry.expired_tag(repo, await registry.manifest(repo, blobs=(layer,)))
        await registry.upload(repo, uploaded, expires_ms=NOW_MS - DAY_MS)
        if name != "ops":
            requests[repo] = f"request-{name}"
            for blob in (layer, uploaded):
                digest = await registry.conn.fetchval("SELECT digest FROM blob WHERE id = $1", blob)
                cause_of_blob[digest] = f"request-{name}"
    ops = repo

    report = await engine.collect_many([Cause(repo, cause) for repo, cause in requests.items()])

    events = await outbox(registry.conn)
    assert report.total == len(events) == 2 * 4  # a tag, a manifest and two blobs each
    for event in events:
        data = event["data"]
        if "repository_id" in data:
            assert event["causationid"] == requests[data["repository_id"]]
        else:
            assert event["causationid"] == cause_of_blob[data["digest"]]
    assert (
        await registry.conn.fetchval("SELECT count(*) FROM tag WHERE repository_id = $1", ops) == 1
    )


async def test_collecting_for_requests_says_how_each_one_ended(
    registry: Registry, engine: Engine, db: asyncpg.Pool[asyncpg.Record]
) -> None:
    """collect_many says, for each request, how it ended: a sweep, and an expiry whose
    tag (OCI or pre-OCI) the collection removed, are `collected`; an expiry whose tag a
    push holds locked right then (the engine skips it) is deferred two seconds."""
    ns = await registry.namespace()
    swept, expiring, legacy, pushed = [
        await registry.repository(ns, name) for name in ("swept", "expiring", "legacy", "pushed")
    ]
    await registry.expired_tag(swept, await registry.manifest(swept))
    expired = await registry.expired_tag(expiring, await registry.manifest(expiring))
    image = await registry.image(legacy, await registry.blob())
    legacy_expired = await registry.expired_repository_tag(legacy, image)
    locked = await registry.expired_tag(pushed, await registry.manifest(pushed))
    causes = [
        Cause(swept, "sweep"),
        Cause(expiring, "expiry", ExpiredTag(expired)),
        Cause(legacy, "legacy-expiry", ExpiredTag(legacy_expired, legacy=True)),
        Cause(pushed, "locked-expiry", ExpiredTag(locked)),
    ]

    async with db.acquire() as push, push.transaction():
        await push.execute("SELECT 1 FROM tag WHERE id = $1 FOR UPDATE", locked)
        report = await engine.collect_many(causes)

    assert report.outcomes == {
        swept: Finished.COLLECTED,
        expiring: Finished.COLLECTED,
        legacy: Finished.COLLECTED,
        pushed: Deferred(NOW_MS + 2_000, "the tag was locked"),
    }
    assert not await exists(registry.conn, "tag", expired)
    assert not await exists(registry.conn, "repository_tag", legacy_expired)
    assert await exists(registry.conn, "tag", locked)


async def test_claims_of_different_shares_never_hold_the_same_object(registry: Registry) -> None:
    """An object queued several times (a blob freed by several manifests) falls in one
    share only: claims side by side in a round never lock it both, and together the
    shares take every candidate, whatever its id (negative ones too: a row may hold
    any)."""
    conn = registry.conn
    repo = await registry.repository(await registry.namespace(), "app")
    queued = {blob: (repo, CAUSE) for blob in (*range(1, 11), -1, -5, -(2**63), 2**63 - 1)}
    for _ in range(3):
        await candidates.queue(conn, "blob", queued)

    claimed = []
    for share in range(3):
        async with conn.transaction():
            batch = await candidates.claim(
                conn, WholeRegistry(CAUSE), "blob", 100, shares=3, share=share
            )
        claimed.append(set(batch))

    assert set.union(*claimed) == set(queued)
    assert sum(map(len, claimed)) == len(queued)
    assert await conn.fetchval("SELECT count(*) FROM gc.candidate") == 0


async def test_claims_side_by_side_take_a_repositorys_manifests_together(
    registry: Registry,
) -> None:
    """Manifests (and legacy images) hold one another within their repository: all of
    one repository's fall in one share, so two claims never delete a list and its
    child, or a subject and its referrer, in two transactions that deadlock."""
    conn = registry.conn
    ns = await registry.namespace()
    repositories = [await registry.repository(ns, f"r{i}") for i in range(5)]
    for repository in repositories:
        queued = {
            manifest: (repository, CAUSE)
            for manifest in range(repository * 100, repository * 100 + 7)
        }
        await candidates.queue(conn, "manifest", queued)

    shares_of: dict[int, set[int]] = {}
    for share in range(3):
        async with conn.transaction():
            batch = await candidates.claim(
                conn, WholeRegistry(CAUSE), "manifest", 100, shares=3, share=share
            )
        for manifest in batch:
            shares_of.setdefault(manifest // 100, set()).add(share)

    assert set(shares_of) == set(repositories)
    assert all(len(shares) == 1 for shares in shares_of.values()), shares_of
