"""`collector run` on pre-OCI tags (CONTRACT §2.1 legacy-tag-expired, §3.1), end to end
through the real Kafka broker and PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from collector.config import Settings
from events import LegacyTagExpired
from tests.integration.test_service import removal_view, requests_table, run_service
from tests.pipeline import Record, pipeline_settings, produce, read_topic, request, topics
from tests.registry import WINDOW_S, FixedClock, Registry, exists


@pytest.fixture
async def settings(database_url: str) -> AsyncIterator[Settings]:
    async with topics(pipeline_settings(database_url)) as settings:
        yield settings


def legacy_expiry(repository_id: int, tag: str, tag_id: int, end_ts: int) -> Record:
    """A legacy-tag-expired request for a pre-OCI tag of acme/web."""
    return request(
        LegacyTagExpired(
            namespace="acme",
            repository="web",
            repository_id=repository_id,
            tag=tag,
            repository_tag_id=tag_id,
            lifetime_end_ts=end_ts,
        )
    )


async def test_a_legacy_tag_expired_request_removes_the_tag_and_its_tag_manifest(
    db: asyncpg.Pool[asyncpg.Record], registry: Registry, settings: Settings, clock: FixedClock
) -> None:
    """The pre-OCI tag, its tag manifest and what only they held are removed; the two new
    removal types reach the topic keyed and shaped as CONTRACT §2.2 says, naming the
    request as causationid."""
    acme = await registry.namespace("acme")
    web = await registry.repository(acme, "web")
    storage = await registry.blob(size=333, digest="sha256:" + "3" * 64)
    image = await registry.image(web, storage)
    docker_image_id = await db.fetchval("SELECT docker_image_id FROM image WHERE id = $1", image)
    manifest = await registry.manifest(web, digest="sha256:" + "e" * 64)
    tag = await registry.expired_repository_tag(web, image, "v1")
    tag_manifest = await registry.tag_manifest(tag, manifest_id=manifest)
    digest = await db.fetchval("SELECT digest FROM tag_manifest WHERE id = $1", tag_manifest)
    end_ts = await db.fetchval("SELECT lifetime_end_ts FROM repository_tag WHERE id = $1", tag)
    expire = legacy_expiry(web, "v1", tag, end_ts)
    await produce(settings.topic_requests, [expire])

    summary = await run_service(settings, clock)

    assert summary.outcomes == {"collected": 1}
    removals = await read_topic(settings.topic_removals)
    request_id = json.loads(expire.value or b"")["id"]
    assert {r.event["causationid"] for r in removals} == {request_id}
    seen = {(t, k, s, json.dumps(d, sort_keys=True)) for t, k, s, d in map(removal_view, removals)}
    scope: dict[str, Any] = {"namespace": "acme", "repository": "web", "repository_id": web}
    expected = [
        ("legacy-tag-removed", "acme/web", "acme/web:v1", {
            **scope, "tag": "v1", "repository_tag_id": tag, "docker_image_id": docker_image_id,
        }),
        ("legacy-manifest-removed", "acme/web", f"acme/web@{digest}", {
            **scope, "tag_manifest_id": tag_manifest, "digest": digest,
        }),
        ("manifest-removed", "acme/web", "acme/web@sha256:" + "e" * 64, {
            **scope, "manifest_id": manifest, "digest": "sha256:" + "e" * 64,
            "media_type": "application/vnd.oci.image.manifest.v1+json",
        }),
        ("legacy-image-removed", "acme/web", f"acme/web/{docker_image_id}", {
            **scope, "image_id": image, "docker_image_id": docker_image_id,
        }),
        ("blob-removed", "sha256:" + "3" * 64, "sha256:" + "3" * 64, {
            "blob_id": storage, "digest": "sha256:" + "3" * 64, "size": 333, "locations": ["s3"],
        }),
    ]  # fmt: skip
    assert seen == {(t, k, s, json.dumps(d, sort_keys=True)) for t, k, s, d in expected}


async def test_restored_and_re_expired_pre_oci_tags_are_left_alone(
    db: asyncpg.Pool[asyncpg.Record], registry: Registry, settings: Settings, clock: FixedClock
) -> None:
    """A request whose pre-OCI tag was restored (its end cleared) or ended again at another
    time is stale: nothing is removed, and a replay of it changes nothing."""
    acme = await registry.namespace("acme")
    web = await registry.repository(acme, "web")
    image = await registry.image(web, await registry.blob())
    restored = await registry.expired_repository_tag(web, image, "restored")
    moved = await registry.expired_repository_tag(web, image, "moved")
    ended = await db.fetchval("SELECT lifetime_end_ts FROM repository_tag WHERE id = $1", moved)
    await db.execute("UPDATE repository_tag SET lifetime_end_ts = NULL WHERE id = $1", restored)
    await db.execute("UPDATE repository_tag SET lifetime_end_ts = $2 WHERE id = $1", moved, 1)
    stale = [
        legacy_expiry(web, "restored", restored, ended),
        legacy_expiry(web, "moved", moved, ended),
    ]
    await produce(settings.topic_requests, [*stale, *stale])

    summary = await run_service(settings, clock)

    assert summary.outcomes == {"stale": 2}
    assert summary.duplicates == 2
    assert await exists(registry.conn, "repository_tag", restored)
    assert await exists(registry.conn, "image", image)
    # The re-expired one is due under its new end: a later event (or a sweep) collects it.
    assert await exists(registry.conn, "repository_tag", moved)
    assert await read_topic(settings.topic_removals) == []


async def test_a_pre_oci_tag_inside_its_window_is_deferred_and_collected_when_due(
    db: asyncpg.Pool[asyncpg.Record], registry: Registry, settings: Settings, clock: FixedClock
) -> None:
    """Due in a minute (the window counted in seconds): deferred durably to that second,
    untouched across a restart until then, collected by the next process after it."""
    acme = await registry.namespace("acme")
    web = await registry.repository(acme, "web")
    image = await registry.image(web, await registry.blob())
    end_ts = clock.ms // 1000 - WINDOW_S + 60
    tag = await registry.repository_tag(web, image, "rc", end_ts=end_ts)
    await produce(settings.topic_requests, [legacy_expiry(web, "rc", tag, end_ts)])

    early = await run_service(settings, clock)

    assert early.outcomes == {}
    (pending,) = await requests_table(db)
    assert pending["outcome"] is None
    assert pending["due_at_ms"] == (end_ts + WINDOW_S) * 1000
    assert await exists(registry.conn, "repository_tag", tag)

    clock.ms = pending["due_at_ms"]  # the due second has come
    later = await run_service(settings, clock)

    assert later.outcomes == {"collected": 1}
    assert not await exists(registry.conn, "repository_tag", tag)
    kinds = sorted(r.event["type"] for r in await read_topic(settings.topic_removals))
    assert kinds == [
        "registry.gc.blob-removed",
        "registry.gc.legacy-image-removed",
        "registry.gc.legacy-tag-removed",
    ]
