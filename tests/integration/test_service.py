"""`collector run` in-process, end to end through the real Kafka broker and PostgreSQL."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
import structlog
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from prometheus_client import REGISTRY

from collector.config import Settings
from collector.service import Service, ServiceSummary
from collector.work import queue
from collector.work.queue import WorkItem
from events import CONTENT_TYPE, RepoDeleted, RepoSweep, TagExpired
from tests.pipeline import (
    Received,
    Record,
    expired_repositories,
    free_port,
    pipeline_settings,
    produce,
    read_topic,
    request,
    topics,
    until,
)
from tests.registry import DAY_MS, MANIFEST, WINDOW_S, FixedClock, Registry, snapshot


@pytest.fixture
async def settings(database_url: str) -> AsyncIterator[Settings]:
    async with topics(pipeline_settings(database_url, max_request_bytes=4096)) as settings:
        yield settings


def expiry(web: int, tag: str, tag_id: int, end_ms: int) -> Record:
    """A tag-expired request for a tag of acme/web (repository id ``web``)."""
    return request(
        TagExpired(
            namespace="acme",
            repository="web",
            repository_id=web,
            tag=tag,
            tag_id=tag_id,
            lifetime_end_ms=end_ms,
        )
    )


async def run_service(settings: Settings, clock: FixedClock, idle_s: float = 0.5) -> ServiceSummary:
    """Run the service until it has been idle for ``idle_s``."""
    service = Service(settings, exit_when_idle_s=idle_s, clock=clock)
    return await asyncio.wait_for(service.run(), 60)


async def requests_table(conn: asyncpg.Pool[asyncpg.Record]) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        "SELECT event_id, event_type, outcome, due_at_ms FROM gc.request ORDER BY id"
    )
    return [dict(row) for row in rows]


def removal_view(record: Received) -> tuple[str, str, str, dict[str, Any]]:
    event = record.event
    assert record.key is not None
    return (
        event["type"].removeprefix("registry.gc."),
        record.key.decode(),
        event["subject"],
        event["data"],
    )


async def test_each_request_type_removes_and_publishes_exactly_what_it_freed(
    db: asyncpg.Pool[asyncpg.Record],
    registry: Registry,
    settings: Settings,
    clock: FixedClock,
) -> None:
    """tag-expired, repo-deleted and repo-sweep each collect their repository; every
    removal reaches the removals topic once, keyed and shaped as CONTRACT §1/§2.2
    say, naming its request as causationid."""
    acme = await registry.namespace("acme")
    web = await registry.repository(acme, "web")
    api = await registry.repository(acme, "api", state="marked_for_deletion")
    ops = await registry.repository(acme, "ops")
    layer = await registry.blob(size=111, digest="sha256:" + "1" * 64, locations=("s3", "gcs"))
    legacy_layer = await registry.blob(size=222, digest="sha256:" + "2" * 64)
    label = await registry.label("maintainer", "ops")
    old = await registry.manifest(web, blobs=(layer,), labels=(label,), digest="sha256:" + "a" * 64)
    image = await registry.image(web, legacy_layer)
    await registry.legacy(web, old, image)
    docker_image_id = await db.fetchval("SELECT docker_image_id FROM image WHERE id = $1", image)
    old_tag = await registry.expired_tag(web, old, "old")
    kept = await registry.manifest(web, blobs=(layer,), digest="sha256:" + "b" * 64)
    await registry.tag(web, kept, "latest")
    api_manifest = await registry.manifest(api, digest="sha256:" + "c" * 64)
    await registry.tag(api, api_manifest, "latest")
    ops_manifest = await registry.manifest(ops, digest="sha256:" + "d" * 64)
    ops_tag = await registry.expired_tag(ops, ops_manifest, "nightly")
    end_ms = await db.fetchval("SELECT lifetime_end_ms FROM tag WHERE id = $1", old_tag)

    expire = expiry(web, "old", old_tag, end_ms)
    purge = request(RepoDeleted(namespace="acme", repository="api", repository_id=api))
    sweep = request(RepoSweep(namespace="acme", repository="ops", repository_id=ops))
    await produce(settings.topic_requests, [expire, purge, sweep])

    summary = await run_service(settings, clock)

    assert summary.accepted == 3
    assert summary.outcomes == {"collected": 2, "purged": 1}
    ids = {json.loads(r.value or b"")["id"]: r for r in (expire, purge, sweep)}
    removals = await read_topic(settings.topic_removals)
    assert all(("content-type", CONTENT_TYPE.encode()) in r.headers for r in removals)
    causes = {r.event["id"]: r.event["causationid"] for r in removals}
    assert set(causes.values()) == set(ids)
    # Each removal names the request of its own repository, even when one worker
    # collected several repositories together; what acme/web freed is its expiry's.
    request_of = {
        "acme/web": json.loads(expire.value or b"")["id"],
        "acme/api": json.loads(purge.value or b"")["id"],
        "acme/ops": json.loads(sweep.value or b"")["id"],
    }
    for record in removals:
        data = record.event["data"]
        path = f"{data['namespace']}/{data['repository']}" if "namespace" in data else "acme/web"
        assert record.event["causationid"] == request_of[path], record.event
    expected = {
        ("tag-removed", "acme/web", "acme/web:old", _json({
            "namespace": "acme", "repository": "web", "repository_id": web, "tag": "old",
            "tag_id": old_tag, "manifest_digest": "sha256:" + "a" * 64,
        })),
        ("manifest-removed", "acme/web", "acme/web@sha256:" + "a" * 64, _json({
            "namespace": "acme", "repository": "web", "repository_id": web, "manifest_id": old,
            "digest": "sha256:" + "a" * 64, "media_type": MANIFEST,
        })),
        ("label-removed", f"label/{label}", f"label/{label}", _json({
            "label_id": label, "key": "maintainer",
        })),
        ("legacy-image-removed", "acme/web", f"acme/web/{docker_image_id}", _json({
            "namespace": "acme", "repository": "web", "repository_id": web, "image_id": image,
            "docker_image_id": docker_image_id,
        })),
        ("blob-removed", "sha256:" + "2" * 64, "sha256:" + "2" * 64, _json({
            "blob_id": legacy_layer, "digest": "sha256:" + "2" * 64, "size": 222,
            "locations": ["s3"],
        })),
        ("manifest-removed", "acme/api", "acme/api@sha256:" + "c" * 64, _json({
            "namespace": "acme", "repository": "api", "repository_id": api,
            "manifest_id": api_manifest, "digest": "sha256:" + "c" * 64, "media_type": MANIFEST,
        })),
        ("repo-purged", "acme/api", "acme/api", _json({
            "namespace": "acme", "repository": "api", "repository_id": api,
        })),
        ("tag-removed", "acme/ops", "acme/ops:nightly", _json({
            "namespace": "acme", "repository": "ops", "repository_id": ops, "tag": "nightly",
            "tag_id": ops_tag, "manifest_digest": "sha256:" + "d" * 64,
        })),
        ("manifest-removed", "acme/ops", "acme/ops@sha256:" + "d" * 64, _json({
            "namespace": "acme", "repository": "ops", "repository_id": ops,
            "manifest_id": ops_manifest, "digest": "sha256:" + "d" * 64, "media_type": MANIFEST,
        })),
    }  # fmt: skip
    seen = [removal_view(r) for r in removals]
    # The purge's tag removal (acme/api:latest) is there too; the label key is its id.
    assert {(t, k, s, _json(d)) for t, k, s, d in seen} >= expected
    assert len(seen) == len(expected) + 1
    assert ("tag-removed", "acme/api", "acme/api:latest") in {v[:3] for v in seen}
    # The shared layer is still used by acme/web:latest.
    assert await db.fetchval("SELECT count(*) FROM blob WHERE id = $1", layer) == 1
    assert await db.fetchval("SELECT count(*) FROM repository WHERE id = $1", api) == 0


async def state_of(db: asyncpg.Pool[asyncpg.Record]) -> dict[str, set[int]]:
    async with db.acquire() as conn:
        return await snapshot(conn)


def _json(data: dict[str, Any]) -> str:
    return json.dumps(data, sort_keys=True)


async def test_redelivered_and_replayed_requests_change_nothing(
    db: asyncpg.Pool[asyncpg.Record],
    registry: Registry,
    settings: Settings,
    clock: FixedClock,
) -> None:
    """The same events again (a producer retry, then a whole replay by a new group)
    are recognised by id: no second removal event, no change in the database."""
    acme = await registry.namespace("acme")
    web = await registry.repository(acme, "web")
    manifest = await registry.manifest(web, blobs=(await registry.blob(),))
    tag = await registry.expired_tag(web, manifest)
    end_ms = await db.fetchval("SELECT lifetime_end_ms FROM tag WHERE id = $1", tag)
    records = [
        expiry(web, "old", tag, end_ms),
        request(RepoSweep(namespace="acme", repository="web", repository_id=web)),
    ]
    await produce(settings.topic_requests, records)
    first = await run_service(settings, clock)
    assert first.accepted == 2
    removals = await read_topic(settings.topic_removals)
    assert len(removals) == 3  # tag, manifest, blob
    state = await state_of(db)

    await produce(settings.topic_requests, records)  # redelivery
    again = await run_service(settings, clock)
    replay_settings = settings.model_copy(update={"group_id": settings.group_id + ".replay"})
    replay = await run_service(replay_settings, clock)

    assert (again.received, again.accepted, again.duplicates) == (2, 0, 2)
    assert (replay.received, replay.accepted, replay.duplicates) == (4, 0, 4)
    assert await read_topic(settings.topic_removals) == removals
    assert await state_of(db) == state
    assert [row["outcome"] for row in await requests_table(db)] == ["collected", "collected"]


async def test_a_tag_inside_its_window_is_deferred_durably_and_collected_when_due(
    db: asyncpg.Pool[asyncpg.Record],
    registry: Registry,
    settings: Settings,
    clock: FixedClock,
) -> None:
    """A tag-expired for a tag still inside its time-machine window changes nothing
    until the window has passed, even across a restart; then the tag is collected."""
    acme = await registry.namespace("acme")
    web = await registry.repository(acme, "web")
    manifest = await registry.manifest(web)
    end_ms = clock.ms - WINDOW_S * 1000 + 60_000  # due in one minute
    tag = await registry.tag(web, manifest, "rc", end_ms=end_ms)
    await produce(
        settings.topic_requests,
        [expiry(web, "rc", tag, end_ms)],
    )

    early = await run_service(settings, clock)

    assert early.outcomes == {}
    (pending,) = await requests_table(db)
    assert pending["outcome"] is None
    assert pending["due_at_ms"] == end_ms + WINDOW_S * 1000
    assert await db.fetchval("SELECT count(*) FROM tag WHERE id = $1", tag) == 1

    clock.ms += 60_000  # the window has passed; a new process takes over
    later = await run_service(settings, clock)

    assert later.outcomes == {"collected": 1}
    assert await db.fetchval("SELECT count(*) FROM tag WHERE id = $1", tag) == 0
    kinds = [r.event["type"] for r in await read_topic(settings.topic_removals)]
    assert sorted(kinds) == ["registry.gc.manifest-removed", "registry.gc.tag-removed"]


async def test_a_tag_whose_due_time_overflows_is_deferred_to_the_end_of_time(
    db: asyncpg.Pool[asyncpg.Record],
    registry: Registry,
    settings: Settings,
    clock: FixedClock,
) -> None:
    """A tag that ends near the bigint maximum, and one in a namespace whose window is
    longer than time: their due times saturate, both requests are deferred durably, and
    the service goes on serving the request behind them."""
    acme = await registry.namespace("acme")
    web = await registry.repository(acme, "web")
    end_of_time = 9_223_372_036_854_775_000
    never = await registry.tag(web, await registry.manifest(web), "never", end_ms=end_of_time)
    old = await registry.expired_tag(web, await registry.manifest(web), "old")
    slow = await registry.namespace("slow", window_s=9_300_000_000_000_000)
    api = await registry.repository(slow, "api")
    late = await registry.tag(api, await registry.manifest(api), "late", end_ms=clock.ms)
    old_end = clock.ms - WINDOW_S * 1000 - DAY_MS
    late_request = request(
        TagExpired(
            namespace="slow",
            repository="api",
            repository_id=api,
            tag="late",
            tag_id=late,
            lifetime_end_ms=clock.ms,
        )
    )
    await produce(
        settings.topic_requests,
        [expiry(web, "never", never, end_of_time), late_request, expiry(web, "old", old, old_end)],
    )

    summary = await run_service(settings, clock)

    assert summary.outcomes == {"collected": 1}
    deferred = [row for row in await requests_table(db) if row["outcome"] is None]
    assert [row["due_at_ms"] for row in deferred] == [2**63 - 1, 2**63 - 1]
    assert await db.fetchval("SELECT count(*) FROM tag WHERE id = ANY($1)", [never, late]) == 2
    assert await db.fetchval("SELECT count(*) FROM tag WHERE id = $1", old) == 0


async def test_one_claim_ends_the_expiries_its_collection_made_stale(
    db: asyncpg.Pool[asyncpg.Record],
    registry: Registry,
    settings: Settings,
    clock: FixedClock,
) -> None:
    """A retention policy expires five tags of a repository at once: the first request
    collects all five, and the four behind it, stale now, end in the same claim (one
    transaction, one finished_at) instead of waiting for a claim each."""
    acme = await registry.namespace("acme")
    web = await registry.repository(acme, "web")
    tags = [
        await registry.expired_tag(web, await registry.manifest(web), f"v{n}") for n in range(5)
    ]
    end_ms = await db.fetchval("SELECT lifetime_end_ms FROM tag WHERE id = $1", tags[0])
    await produce(
        settings.topic_requests, [expiry(web, f"v{n}", tag, end_ms) for n, tag in enumerate(tags)]
    )

    summary = await run_service(settings, clock)

    assert summary.outcomes == {"collected": 1, "stale": 4}
    rows = await db.fetch("SELECT outcome, finished_at FROM gc.request ORDER BY id")
    assert [row["outcome"] for row in rows] == ["collected"] + ["stale"] * 4
    assert len({row["finished_at"] for row in rows}) == 1
    assert await db.fetchval("SELECT count(*) FROM tag") == 0


async def test_restored_and_re_expired_tags_are_left_alone(
    db: asyncpg.Pool[asyncpg.Record],
    registry: Registry,
    settings: Settings,
    clock: FixedClock,
) -> None:
    """An event whose tag was restored (lifetime_end_ms cleared) or re-expired (a new
    lifetime_end_ms) since it was sent removes nothing."""
    acme = await registry.namespace("acme")
    web = await registry.repository(acme, "web")
    manifest = await registry.manifest(web)
    restored = await registry.expired_tag(web, manifest, "restored")
    re_expired = await registry.expired_tag(web, manifest, "re-expired")
    end_ms = await db.fetchval("SELECT lifetime_end_ms FROM tag WHERE id = $1", restored)
    await produce(
        settings.topic_requests,
        [
            expiry(web, name, tag, end_ms)
            for name, tag in (("restored", restored), ("re-expired", re_expired))
        ],
    )
    await db.execute("UPDATE tag SET lifetime_end_ms = NULL WHERE id = $1", restored)
    # Re-expired a day later: still past the window, but this event is not its event.
    await db.execute(
        "UPDATE tag SET lifetime_end_ms = $2 WHERE id = $1", re_expired, end_ms + DAY_MS
    )
    state = await state_of(db)

    summary = await run_service(settings, clock)

    assert summary.outcomes == {"stale": 2}
    assert await state_of(db) == state
    assert await read_topic(settings.topic_removals) == []


async def test_a_stale_expiry_collects_what_its_cut_off_first_run_queued(
    db: asyncpg.Pool[asyncpg.Record],
    registry: Registry,
    settings: Settings,
    clock: FixedClock,
) -> None:
    """A first run of a tag-expired removed the tag and queued its manifest, then died
    (SIGKILL, a lost claim) before the request was marked finished. Redone, the request
    is stale, but what that run queued still waits in the repository: it is collected
    now, not stranded until some other request or a scan comes by."""
    acme = await registry.namespace("acme")
    web = await registry.repository(acme, "web")
    blob = await registry.blob()
    manifest = await registry.manifest(web, blobs=(blob,))
    tag = await registry.expired_tag(web, manifest, "v1")
    end_ms = await db.fetchval("SELECT lifetime_end_ms FROM tag WHERE id = $1", tag)
    await produce(settings.topic_requests, [expiry(web, "v1", tag, end_ms)])
    async with db.acquire() as conn, conn.transaction():  # what the first run committed
        await conn.execute("DELETE FROM tag WHERE id = $1", tag)
        await conn.execute(
            "INSERT INTO gc.candidate (kind, object_id, repository_id, causation_id)"
            " VALUES ('manifest', $1, $2, 'first-run')",
            manifest,
            web,
        )

    summary = await run_service(settings, clock)

    assert summary.outcomes == {"stale": 1}
    assert await db.fetchval("SELECT count(*) FROM gc.candidate") == 0
    for table, row_id in (("manifest", manifest), ("blob", blob)):
        assert not await db.fetchval(f"SELECT EXISTS (SELECT FROM {table} WHERE id = $1)", row_id)
    removed = [r.event["type"] for r in await read_topic(settings.topic_removals)]
    assert sorted(removed) == ["registry.gc.blob-removed", "registry.gc.manifest-removed"]


def _text(raw: bytes) -> tuple[str, str]:
    try:
        return raw.decode(), "utf-8"
    except UnicodeDecodeError:
        return base64.b64encode(raw).decode(), "base64"


async def test_every_refused_record_is_dead_lettered_and_good_ones_behind_it_are_served(
    db: asyncpg.Pool[asyncpg.Record],
    registry: Registry,
    settings: Settings,
    clock: FixedClock,
) -> None:
    """Each kind of bad input reaches the dead-letter topic with its reason and the
    original record, keyed as it was; a forged repo-deleted for a live repository is
    refused and wipes nothing; the good request after them all is still served."""
    acme = await registry.namespace("acme")
    web = await registry.repository(acme, "web")
    manifest = await registry.manifest(web, blobs=(await registry.blob(),))
    await registry.tag(web, manifest, "latest")
    expired = await registry.expired_tag(web, await registry.manifest(web), "old")
    state = await state_of(db)

    def envelope(**changes: Any) -> bytes:
        event = {
            "specversion": "1.0",
            "id": "e-1",
            "source": "/tests",
            "type": "registry.gc.repo-sweep",
            "time": "2026-11-28T00:00:00Z",
            "datacontenttype": "application/json",
            "data": {"namespace": "acme", "repository": "web", "repository_id": web},
        }
        return json.dumps({**event, **changes}).encode()

    headers = [("content-type", CONTENT_TYPE.encode())]
    key = b"acme/web"
    bad = [
        ("oversized-value", Record(key, envelope(padding="x" * 5000), headers)),
        ("invalid-key", Record(None, envelope(), headers)),
        ("invalid-key", Record(b"\xff\xfe", envelope(), headers)),
        ("malformed-json", Record(key, b'{"specversion": "1.0",', headers)),
        ("malformed-json", Record(key, b"\x80\x81 not utf-8", headers)),
        ("invalid-envelope", Record(key, envelope(specversion="0.3"), headers)),
        # Would poison gc.request: a NUL no text column holds, an id too long to index.
        ("invalid-envelope", Record(key, envelope(id="e\u0000-2"), headers)),
        ("invalid-envelope", Record(key, envelope(id="e" * 3000), headers)),
        ("unknown-type", Record(key, envelope(type="registry.gc.everything-deleted"), headers)),
        (
            "invalid-field",
            Record(key, envelope(data={"namespace": "acme", "repository": "web"}), headers),
        ),
        ("key-mismatch", Record(b"acme/api", envelope(), headers)),
        (
            "unknown-repository",
            Record(
                key,
                envelope(data={"namespace": "acme", "repository": "web", "repository_id": 999}),
                headers,
            ),
        ),
        (
            "repository-not-marked",
            request(RepoDeleted(namespace="acme", repository="web", repository_id=web)),
        ),
    ]
    good = request(RepoSweep(namespace="acme", repository="web", repository_id=web))
    await produce(settings.topic_requests, [record for _, record in bad] + [good])

    summary = await run_service(settings, clock)

    assert summary.outcomes == {"collected": 1}
    assert summary.refused == {reason: sum(1 for r, _ in bad if r == reason) for reason, _ in bad}
    letters = await read_topic(settings.topic_dead_letter, partitions=1)
    originals = {(r.partition, r.offset): r for r in await read_topic(settings.topic_requests)}
    expected_reason = {(record.key, record.value): reason for reason, record in bad}
    assert len(letters) == len(bad)
    for letter in letters:
        event, data = letter.event, letter.event["data"]
        assert event["type"] == "registry.gc.request-rejected"
        assert ("content-type", CONTENT_TYPE.encode()) in letter.headers
        assert data["topic"] == settings.topic_requests
        original = originals[(data["partition"], data["offset"])]
        assert letter.key == original.key
        assert data["reason"] == expected_reason[(original.key, original.value)]
        assert data["detail"]
        assert original.value is not None
        assert (data["value"], data["value_encoding"]) == _text(original.value)
        if original.key is None:
            assert (data["key"], data["key_encoding"]) == (None, None)
        else:
            assert (data["key"], data["key_encoding"]) == _text(original.key)
    # The forged purge changed nothing; only the good sweep removed the expired tag.
    after = await state_of(db)
    assert after["tag"] == state["tag"] - {expired}
    assert after["repository"] == state["repository"]
    assert after["blob"] == state["blob"]


async def test_lost_database_connections_are_waited_out_and_nothing_is_lost(
    db: asyncpg.Pool[asyncpg.Record],
    registry: Registry,
    settings: Settings,
    clock: FixedClock,
) -> None:
    """Every connection of the service is killed, again and again, while it works: it
    retries with backoff, and in the end every request is finished and every
    deletion is on the removals topic."""
    sweeps = [request(s) for s in await expired_repositories(registry, 20, layered=True)]
    await produce(settings.topic_requests, sweeps)
    kills = 0

    async def kill_connections() -> None:
        nonlocal kills
        for _ in range(20):
            await asyncio.sleep(0.15)
            kills += await db.fetchval(
                """
                SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
                WHERE datname = current_database() AND application_name LIKE 'collector%'
                """
            )

    summary, _ = await asyncio.gather(run_service(settings, clock, idle_s=1.0), kill_connections())

    assert kills > 20
    # The database is the record: a commit whose reply was lost is not in the summary.
    assert summary.outcomes.keys() == {"collected"}
    assert [row["outcome"] for row in await requests_table(db)] == ["collected"] * 20
    assert await db.fetchval("SELECT count(*) FROM tag") == 0
    assert await db.fetchval("SELECT count(*) FROM blob") == 0
    published = {r.event["id"] for r in await read_topic(settings.topic_removals)}
    outbox = {str(row["event_id"]) for row in await db.fetch("SELECT event_id FROM gc.outbox")}
    assert len(outbox) == 60
    assert published == outbox


async def test_a_backlog_of_due_work_pauses_the_intake_until_workers_catch_up(
    db: asyncpg.Pool[asyncpg.Record],
    registry: Registry,
    settings: Settings,
    clock: FixedClock,
) -> None:
    """With more due requests waiting than COLLECTOR_INTAKE_MAX_BACKLOG, the intake
    pauses its partitions (it keeps polling, so it stays in the group) and resumes
    once the workers have halved the backlog; every request is served."""
    sweeps = [request(s) for s in await expired_repositories(registry, 30)]
    await produce(settings.topic_requests, sweeps)
    throttled = settings.model_copy(
        update={
            "intake_max_backlog": 4,
            "repository_concurrency": 1,
            "batch_size": 5,
            "intake_poll_records": 5,
        }
    )

    with structlog.testing.capture_logs() as logs:
        summary = await run_service(throttled, clock)

    events = [entry["event"] for entry in logs]
    assert "intake_paused" in events
    assert "intake_resumed" in events
    # Paused within one poll of passing the limit: below it when last counted (at most
    # 3), plus the batches then still being admitted (one per partition: 3 x 5), plus the
    # one poll (5 records in all) of a partition whose batch finished since.
    assert max(e["backlog"] for e in logs if e["event"] == "intake_paused") <= 3 + 3 * 5 + 5
    assert summary.outcomes == {"collected": 30}


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_metrics_count_every_decision_and_are_served_on_loopback(
    db: asyncpg.Pool[asyncpg.Record],
    registry: Registry,
    settings: Settings,
    clock: FixedClock,
) -> None:
    """With a metrics port, /metrics on 127.0.0.1 shows what the service decided:
    records by verdict, dead letters by reason, requests by outcome, removals by type."""
    acme = await registry.namespace("acme")
    web = await registry.repository(acme, "web")
    await registry.expired_tag(web, await registry.manifest(web))
    sweep = request(RepoSweep(namespace="acme", repository="web", repository_id=web))
    await produce(settings.topic_requests, [sweep, sweep, Record(b"acme/web", b"{")])
    port = free_port()
    before = {
        "accepted": sample("registry_gc_requests_received_total", verdict="accepted"),
        "duplicate": sample("registry_gc_requests_received_total", verdict="duplicate"),
        "malformed": sample("registry_gc_dead_letters_total", reason="malformed-json"),
        "collected": sample(
            "registry_gc_requests_finished_total", type="repo-sweep", outcome="collected"
        ),
        "tags": sample("registry_gc_removals_total", type="tag-removed"),
        "published": sample("registry_gc_events_published_total"),
    }
    service = asyncio.create_task(
        run_service(settings.model_copy(update={"metrics_port": port}), clock, idle_s=1.0)
    )
    page = ""
    while "registry_gc_removals_total" not in page and not service.done():
        await asyncio.sleep(0.2)
        with contextlib.suppress(OSError):
            page = await asyncio.to_thread(_fetch, f"http://127.0.0.1:{port}/metrics")
    await service

    assert 'registry_gc_removals_total{type="tag-removed"}' in page
    assert sample("registry_gc_requests_received_total", verdict="accepted") == (
        before["accepted"] + 1
    )
    assert sample("registry_gc_requests_received_total", verdict="duplicate") == (
        before["duplicate"] + 1
    )
    assert sample("registry_gc_dead_letters_total", reason="malformed-json") == (
        before["malformed"] + 1
    )
    assert sample(
        "registry_gc_requests_finished_total", type="repo-sweep", outcome="collected"
    ) == (before["collected"] + 1)
    assert sample("registry_gc_removals_total", type="tag-removed") == (before["tags"] + 1)
    assert sample("registry_gc_events_published_total") == before["published"] + 2
    assert sample("registry_gc_outbox_pending") == 0  # the relay drained the outbox
    with pytest.raises(urllib.error.URLError):  # the endpoint went with the service
        _fetch(f"http://127.0.0.1:{port}/metrics")


async def test_removed_bytes_and_the_outbox_age_are_counted(
    registry: Registry, settings: Settings, clock: FixedClock
) -> None:
    """A blob's removal adds its size to registry_gc_removed_bytes_total; a drained
    outbox shows an oldest age of 0."""
    web = await registry.repository(await registry.namespace("acme"), "web")
    manifest = await registry.manifest(web, blobs=(await registry.blob(size=4096),))
    await registry.expired_tag(web, manifest)
    await produce(
        settings.topic_requests,
        [request(RepoSweep(namespace="acme", repository="web", repository_id=web))],
    )
    before = sample("registry_gc_removed_bytes_total", type="blob-removed")

    summary = await run_service(settings, clock, idle_s=1.0)

    assert summary.published == 3  # tag, manifest, blob
    after = sample("registry_gc_removed_bytes_total", type="blob-removed")
    assert after == before + 4096
    assert sample("registry_gc_outbox_oldest_age_seconds") == 0


async def test_the_metrics_listener_answers_health_and_readiness_probes(
    settings: Settings, clock: FixedClock
) -> None:
    """/healthz answers while the service runs; /readyz turns ready once the consumer
    joined its group, every check named; the metrics listener serves nothing else."""
    port = free_port()
    service = Service(settings.model_copy(update={"metrics_port": port}), clock=clock)
    running = asyncio.create_task(service.run())
    base = f"http://127.0.0.1:{port}"
    readiness: dict[str, Any] = {}
    try:
        async with asyncio.timeout(30):
            while not readiness.get("ready"):
                await asyncio.sleep(0.1)
                with contextlib.suppress(OSError):
                    readiness = json.loads(await asyncio.to_thread(_fetch, f"{base}/readyz"))
        alive = json.loads(await asyncio.to_thread(_fetch, f"{base}/healthz"))
        with pytest.raises(urllib.error.HTTPError) as missing:
            await asyncio.to_thread(_fetch, f"{base}/")
    finally:
        service.stop()
        await asyncio.wait_for(running, 60)

    assert readiness == {
        "ready": True,
        "checks": {"database": True, "broker": True, "consumer": True, "stages": True},
    }
    assert alive == {"alive": True}
    assert missing.value.code == 404
    missing.value.close()


def _fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=2) as response:
        body: bytes = response.read()
        return body.decode()


async def test_a_member_joining_mid_stream_takes_partitions_without_losing_a_request(
    db: asyncpg.Pool[asyncpg.Record],
    registry: Registry,
    settings: Settings,
    clock: FixedClock,
) -> None:
    """A second service joins the group while the first is consuming a stream of
    requests: the first hands its revoked partitions over (drain, commit), and every
    request is admitted and finished exactly once between the two."""
    sweeps = [request(s) for s in await expired_repositories(registry, 60)]
    members = [Service(settings, clock=clock), Service(settings, clock=clock)]
    with structlog.testing.capture_logs() as logs:
        first = asyncio.create_task(members[0].run())
        await produce(settings.topic_requests, sweeps[:20])

        async def admitted() -> bool:
            return bool(await db.fetchval("SELECT count(*) >= 5 FROM gc.request"))

        async def rebalanced() -> bool:
            """The first member gave partitions up and both hold some now."""
            assigned = [e["partitions"] for e in logs if e["event"] == "partitions_assigned"]
            return len(assigned) >= 3 and all(assigned[-2:])

        async def finished() -> bool:
            return bool(
                await db.fetchval(
                    "SELECT count(*) = 60 AND bool_and(outcome IS NOT NULL) FROM gc.request"
                )
            )

        await until(admitted)
        second = asyncio.create_task(members[1].run())
        await until(rebalanced)
        await produce(settings.topic_requests, sweeps[20:])
        await until(finished)
        for member in members:
            member.stop()
        summaries = await asyncio.wait_for(asyncio.gather(first, second), 60)

    assert [e for e in logs if e["event"] == "partitions_revoked"], "the group rebalanced"
    assert sum(s.accepted for s in summaries) == 60
    assert all(s.received for s in summaries), "both members consumed"
    rows = await requests_table(db)
    assert len(rows) == 60
    assert {row["outcome"] for row in rows} == {"collected"}
    assert await db.fetchval("SELECT count(*) FROM tag") == 0


async def test_idle_waits_for_partitions_a_dead_member_still_holds(
    db: asyncpg.Pool[asyncpg.Record],
    registry: Registry,
    settings: Settings,
    clock: FixedClock,
) -> None:
    """A member that died (SIGKILL) keeps its partitions until its session expires;
    what they hold unread is work. A service run until idle does not call itself idle
    while any partition of the topic is uncommitted: it takes them over once the
    member is gone, and only then exits."""
    sweeps = await expired_repositories(registry, 12)
    ghost = AIOKafkaConsumer(
        settings.topic_requests,
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=settings.group_id,
        enable_auto_commit=False,
    )
    await ghost.start()
    await until(lambda: len(ghost.assignment()) == settings.topic_partitions)
    service = Service(settings, exit_when_idle_s=0.5, clock=clock)
    running = asyncio.create_task(service.run())
    await until(lambda: len(ghost.assignment()) < settings.topic_partitions)  # shared now
    held = {tp.partition for tp in ghost.assignment()}
    await produce(settings.topic_requests, [request(sweep) for sweep in sweeps])
    written = {r.partition for r in await read_topic(settings.topic_requests)}
    # The service finishes its own share, then would be idle but for the held partitions.
    await until(lambda: _finished_at_least(db, 1))
    await asyncio.sleep(2)  # idle four times over, were the held partitions not work
    exited_early = running.done()
    await ghost.stop()  # gone: the group hands its partitions over
    summary = await asyncio.wait_for(running, 60)

    assert held & written, "requests wait in a partition the other member holds"
    assert written - held, "and in one the service holds"
    assert not exited_early, "idle while partitions held by another member were unread"
    assert summary.outcomes == {"collected": 12}
    assert await db.fetchval("SELECT count(*) FROM tag") == 0


async def test_concurrent_workers_finish_each_request_exactly_once(
    db: asyncpg.Pool[asyncpg.Record],
    registry: Registry,
    settings: Settings,
    clock: FixedClock,
) -> None:
    """Eight workers racing over many quick requests: each request is worked on
    once, whatever commits between one worker reading the heads and locking one."""
    acme = await registry.namespace("acme")
    records = []
    for number in range(40):
        repository = await registry.repository(acme, f"repo{number}")
        manifest = await registry.manifest(repository)
        for tag_number in range(5):
            tag = await registry.expired_tag(repository, manifest, f"t{tag_number}")
            end_ms = await db.fetchval("SELECT lifetime_end_ms FROM tag WHERE id = $1", tag)
            records.append(
                request(
                    TagExpired(
                        namespace="acme",
                        repository=f"repo{number}",
                        repository_id=repository,
                        tag=f"t{tag_number}",
                        tag_id=tag,
                        lifetime_end_ms=end_ms,
                    )
                )
            )
    await produce(settings.topic_requests, records)

    summary = await run_service(settings.model_copy(update={"repository_concurrency": 8}), clock)

    # The first request of each repository collects all five tags; the rest are stale.
    assert summary.outcomes == {"collected": 40, "stale": 160}


async def test_immutable_tags_and_repositories_unmarked_since_admission_are_left_alone(
    db: asyncpg.Pool[asyncpg.Record],
    registry: Registry,
    settings: Settings,
    clock: FixedClock,
) -> None:
    """A tag-expired for an immutable tag removes nothing (outcome immutable); a
    repo-deleted admitted while the repository was marked, whose mark was lifted
    before a worker got to it, purges nothing (outcome not-marked)."""
    acme = await registry.namespace("acme")
    web = await registry.repository(acme, "web")
    pinned = await registry.expired_tag(web, await registry.manifest(web), immutable=True)
    end_ms = await db.fetchval("SELECT lifetime_end_ms FROM tag WHERE id = $1", pinned)
    api = await registry.repository(acme, "api", state="marked_for_deletion")
    await registry.tag(api, await registry.manifest(api))
    async with db.acquire() as conn:  # admitted while marked...
        await queue.admit(
            conn,
            [
                WorkItem(
                    source="/t",
                    event_id="purge-api",
                    event_type="repo-deleted",
                    repository_id=api,
                    repository_path="acme/api",
                )
            ],
            clock.ms,
        )
    await db.execute("UPDATE repository SET state = 'normal' WHERE id = $1", api)  # ...lifted
    await produce(settings.topic_requests, [expiry(web, "old", pinned, end_ms)])
    state = await state_of(db)

    summary = await run_service(settings, clock)

    assert summary.outcomes == {"immutable": 1, "not-marked": 1}
    assert await state_of(db) == state
    assert await read_topic(settings.topic_removals) == []


async def test_a_purge_whose_mark_is_lifted_before_its_turn_is_dead_lettered(
    db: asyncpg.Pool[asyncpg.Record],
    registry: Registry,
    settings: Settings,
    clock: FixedClock,
    database_url: str,
) -> None:
    """A repo-deleted admitted while its repository was marked, whose mark the registry
    lifts before the purge may start, is refused like a forged one: it reaches the
    dead-letter topic with its original position (the value stays there), and nothing
    of the repository goes."""
    acme = await registry.namespace("acme")
    api = await registry.repository(acme, "api", state="marked_for_deletion")
    await registry.tag(api, await registry.manifest(api))
    state = await state_of(db)
    registry_app = await asyncpg.connect(database_url)
    try:
        async with registry_app.transaction():  # the registry lifts the mark...
            await registry_app.execute("UPDATE repository SET state = 'normal' WHERE id = $1", api)
            await produce(
                settings.topic_requests,
                [request(RepoDeleted(namespace="acme", repository="api", repository_id=api))],
            )
            service = asyncio.create_task(run_service(settings, clock))
            # ...and commits only once the purge waits for its row lock.
            await until(lambda: _purge_waits_for_lock(db))
        summary = await service
    finally:
        await registry_app.close()

    assert summary.outcomes == {"not-marked": 1}
    assert summary.refused == {"repository-not-marked": 1}
    assert await state_of(db) == state  # nothing removed
    [letter] = await read_topic(settings.topic_dead_letter, partitions=1)
    [original] = await read_topic(settings.topic_requests)
    data = letter.event["data"]
    assert data["reason"] == "repository-not-marked"
    assert "no longer marked for deletion" in data["detail"]
    assert f"partition {original.partition} offset {original.offset}" in data["detail"]
    assert (data["topic"], data["partition"], data["offset"]) == (
        settings.topic_requests,
        original.partition,
        original.offset,
    )
    assert (data["key"], data["value"]) == ("acme/api", None)
    assert letter.event["causationid"] == original.event["id"]


async def _purge_waits_for_lock(db: asyncpg.Pool[asyncpg.Record]) -> bool:
    waiting: int = await db.fetchval(
        """
        SELECT count(*) FROM pg_stat_activity
        WHERE datname = current_database() AND application_name LIKE 'collector%'
          AND wait_event_type = 'Lock'
        """
    )
    return waiting > 0


async def test_a_request_the_database_refuses_to_store_is_dead_lettered_alone(
    db: asyncpg.Pool[asyncpg.Record],
    registry: Registry,
    settings: Settings,
    clock: FixedClock,
) -> None:
    """Should a request pass decoding that PostgreSQL still cannot store (a data
    exception: here a trigger raises one for it), its batch is admitted record by
    record: that one is dead-lettered as `unstorable`, the others go in, in order,
    and the intake does not fail on it again and again."""
    [sweep] = await expired_repositories(registry, 1)
    records = [request(sweep, event_id=event_id) for event_id in ("before", "poison", "after")]
    await db.execute(
        """
        CREATE FUNCTION gc.test_refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.event_id = 'poison' THEN
                RAISE EXCEPTION 'cannot store %', NEW.event_id USING ERRCODE = '22021';
            END IF;
            RETURN NEW;
        END $$;
        CREATE TRIGGER test_refuse_poison BEFORE INSERT ON gc.request
            FOR EACH ROW EXECUTE FUNCTION gc.test_refuse_poison();
        """
    )
    try:
        await produce(settings.topic_requests, records)
        summary = await run_service(settings, clock)
    finally:
        await db.execute("DROP FUNCTION gc.test_refuse_poison() CASCADE")

    assert summary.refused == {"unstorable": 1}
    assert [row["event_id"] for row in await requests_table(db)] == ["before", "after"]
    [letter] = await read_topic(settings.topic_dead_letter, partitions=1)
    data = letter.event["data"]
    assert data["reason"] == "unstorable"
    assert "cannot store poison" in data["detail"]
    [original] = [r for r in await read_topic(settings.topic_requests) if r.event["id"] == "poison"]
    assert (data["partition"], data["offset"]) == (original.partition, original.offset)


async def test_a_megabyte_of_binary_junk_is_dead_lettered_whole(
    database_url: str, clock: FixedClock
) -> None:
    """The largest value the broker takes by default, not UTF-8, is refused and kept
    byte for byte: base64 makes it a third larger than the broker's default message
    size, which the dead-letter topic is created to accept."""
    junk = bytes(range(256)) * 3900  # 998,400 bytes, not UTF-8
    async with topics(pipeline_settings(database_url)) as settings:
        await produce(settings.topic_requests, [Record(b"acme/web", junk)])
        summary = await run_service(settings, clock)
        (letter,) = await read_topic(settings.topic_dead_letter, partitions=1)

    assert summary.refused == {"malformed-json": 1}
    data = letter.event["data"]
    assert data["value_encoding"] == "base64"
    assert base64.b64decode(data["value"]) == junk
    assert letter.value is not None
    assert len(letter.value) > 1_048_588  # the broker's default message.max.bytes


async def test_a_dead_letter_too_large_for_its_topic_goes_without_the_value(
    database_url: str, clock: FixedClock
) -> None:
    """On a dead-letter topic created by hand with a small message size, a refusal
    whose value does not fit is published without it, saying where the value stays."""
    settings = pipeline_settings(database_url)
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        small = {"max.message.bytes": "2000"}
        await admin.create_topics([NewTopic(settings.topic_dead_letter, 1, 1, None, small)])
    finally:
        await admin.close()
    junk = b"\xff" * 3000
    async with topics(settings):
        await produce(settings.topic_requests, [Record(b"acme/web", junk)])
        with structlog.testing.capture_logs() as logs:
            summary = await run_service(settings, clock)
        (letter,) = await read_topic(settings.topic_dead_letter, partitions=1)
        (original,) = await read_topic(settings.topic_requests)

    [warning] = [entry for entry in logs if entry["event"] == "dead_letter_topic_limited"]
    assert warning["max_message_bytes"] == 2000
    assert "--add-config max.message.bytes=8388608" in warning["advice"]
    assert summary.refused == {"malformed-json": 1}
    data = letter.event["data"]
    assert (data["value"], data["value_encoding"]) == (None, None)
    assert "(3000 bytes) is not kept here" in data["detail"]
    assert f"partition {original.partition} offset {original.offset}" in data["detail"]
    assert (data["partition"], data["offset"]) == (original.partition, original.offset)


async def _finished_at_least(db: asyncpg.Pool[asyncpg.Record], count: int) -> bool:
    finished: int = await db.fetchval("SELECT count(*) FROM gc.request WHERE outcome IS NOT NULL")
    return finished >= count
