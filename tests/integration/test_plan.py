"""The plan: what a collection would remove, counted by the collectors' own rules without
removing anything, and the collection then removes exactly that."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections import Counter
from typing import Any

import asyncpg
import pytest

from collector.db.connector import Connection
from collector.engine import Cause, Engine
from collector.engine.plan import Plan, PlanScope, plan
from tests.registry import DAY_MS, NOW_MS, WINDOW_S, Registry, outbox, snapshot

PROTECTED = "sha256:" + "e" * 64  # the engine fixture's protected digest
WEEK_S = 7 * 86_400


async def plan_of(conn: Connection, scope: PlanScope, **kwargs: Any) -> Plan:
    return await plan(
        conn, scope, now_ms=NOW_MS, horizon_s=WEEK_S, protected_digests=[PROTECTED], **kwargs
    )


async def repositories_of(conn: Connection, namespace: str) -> list[tuple[int, bool]]:
    rows = await conn.fetch(
        "SELECT r.id, r.state = 'marked_for_deletion' AS marked FROM repository r"
        " JOIN namespace n ON n.id = r.namespace_id WHERE n.name = $1 ORDER BY r.id",
        namespace,
    )
    return [(row["id"], row["marked"]) for row in rows]


async def collect_namespace(conn: Connection, engine: Engine, namespace: str) -> Counter[str]:
    """What `collect --purge` of every repository of ``namespace`` removes, by event type,
    and the bytes (under the key "bytes")."""
    removed: Counter[str] = Counter()
    repositories = await repositories_of(conn, namespace)
    for repository_id, _ in filter(lambda r: r[1], repositories):
        report = await engine.purge(repository_id, causation_id=f"purge-{repository_id}")
        removed.update(report.removed)
        removed["bytes"] += report.bytes_freed
    others = [
        Cause(repository_id, "collect") for repository_id, marked in repositories if not marked
    ]
    report = await engine.collect_many(others)
    removed.update(report.removed)
    removed["bytes"] += report.bytes_freed
    return removed


async def known_registry(registry: Registry) -> dict[str, int]:
    """Namespace "acme" with one of everything a collection meets; "other" holds a
    blob acme shares. Returns the ids a test names."""
    acme, other = await registry.namespace("acme"), await registry.namespace("other")
    app = await registry.repository(acme, "app")
    keep = await registry.repository(other, "keep")
    ids: dict[str, int] = {}
    # An expired tag: its manifest, two blobs of its own, a label, and a blob "other" shares.
    own1, own2 = await registry.blob(size=10), await registry.blob(size=20)
    ids["shared"] = shared = await registry.blob(size=1_000)
    label = await registry.label()
    manifest = await registry.manifest(app, blobs=(own1, own2, shared), labels=(label,))
    await registry.expired_tag(app, manifest, "v1")
    await registry.tag(keep, await registry.manifest(keep, blobs=(shared,)), "live")
    # An expired manifest list: the list, two children (one with a referrer), their blobs.
    child_blob1, child_blob2 = await registry.blob(size=300), await registry.blob(size=400)
    child1 = await registry.manifest(app, blobs=(child_blob1,))
    child2 = await registry.manifest(app, blobs=(child_blob2,))
    await registry.manifest(
        app, subject=await registry.manifest_digest(child1), blobs=(await registry.blob(size=5),)
    )
    index = await registry.manifest(app, children=(child1, child2))
    await registry.expired_tag(app, index, "multi")
    # A pre-OCI tag with its tag manifest and a legacy image chain of two.
    root = await registry.image(app, await registry.blob(size=7))
    leaf = await registry.image(app, await registry.blob(size=11), parent_id=root)
    legacy_tag = await registry.expired_repository_tag(app, leaf, "v0")
    await registry.tag_manifest(legacy_tag)
    # An expired upload.
    await registry.upload(app, await registry.blob(size=50), NOW_MS - DAY_MS)
    # Freed but kept: a placeholder (no placement) and a protected digest.
    placeholder = await registry.blob(size=2_000, locations=())
    protected = await registry.blob(size=3_000, digest=PROTECTED)
    await registry.expired_tag(app, await registry.manifest(app, blobs=(placeholder, protected)))
    # An immutable tag past its window: kept, listed.
    await registry.expired_tag(app, await registry.manifest(app), "pinned", immutable=True)
    # Due within the week: a tag and an upload.
    soon = NOW_MS - WINDOW_S * 1000 + 3 * DAY_MS
    await registry.tag(
        app,
        await registry.manifest(app, blobs=(await registry.blob(size=60),)),
        "soon",
        end_ms=soon,
    )
    await registry.upload(app, await registry.blob(size=70), NOW_MS + 2 * DAY_MS)
    # A marked repository with an untagged manifest and a tagged one.
    gone = await registry.repository(acme, "gone", state="marked_for_deletion")
    await registry.tag(gone, await registry.manifest(gone, blobs=(await registry.blob(size=80),)))
    await registry.manifest(gone, blobs=(await registry.blob(size=90),))
    ids.update(app=app, gone=gone, keep=keep)
    return ids


async def test_collect_removes_exactly_what_the_plan_counted(
    registry: Registry, engine: Engine
) -> None:
    """plan says N objects and B bytes for a namespace; collecting that namespace removes
    those N (by event type) and its blob-removed events size B. A blob another namespace
    holds counts nowhere; kept objects are listed and not counted."""
    ids = await known_registry(registry)
    conn = registry.conn
    before = await snapshot(conn)

    planned = await plan_of(conn, PlanScope(namespace="acme"))

    assert await snapshot(conn) == before
    assert dict(planned.now.removed) == {
        "registry.gc.tag-removed": 4,  # v1, multi, old, and gone's (pinned is immutable)
        "registry.gc.manifest-removed": 8,
        "registry.gc.blob-removed": 10,
        "registry.gc.label-removed": 1,
        "registry.gc.legacy-tag-removed": 1,
        "registry.gc.legacy-manifest-removed": 1,
        "registry.gc.legacy-image-removed": 2,
        "registry.gc.repo-purged": 1,
    }
    assert planned.now.bytes == 10 + 20 + 300 + 400 + 5 + 7 + 11 + 50 + 80 + 90
    assert planned.now.uploads == 1
    assert planned.by_horizon.removed - planned.now.removed == Counter(
        {
            "registry.gc.tag-removed": 1,
            "registry.gc.manifest-removed": 1,
            "registry.gc.blob-removed": 2,
        }
    )
    assert planned.by_horizon.bytes - planned.now.bytes == 60 + 70
    assert planned.protected.immutable_tags == 1
    assert [name for name, _ in planned.protected.immutable_examples] == ["pinned"]
    assert sorted((b.size, b.protected) for b in planned.protected.blobs) == [
        (2_000, False),
        (3_000, True),
    ]
    assert planned.largest[0].size == 400
    assert planned.paths[ids["app"]] == "acme/app"

    removed = await collect_namespace(conn, engine, "acme")

    assert removed.pop("bytes") == planned.now.bytes
    assert removed == planned.now.removed
    blob_sizes = [
        e["data"]["size"] for e in await outbox(conn) if e["type"] == "registry.gc.blob-removed"
    ]
    assert sum(blob_sizes) == planned.now.bytes
    assert await conn.fetchval("SELECT count(*) FROM blob WHERE id = $1", ids["shared"]) == 1


class PushMidway:
    """The plan's connection, running ``push`` (on another connection) once, between two
    rounds of the plan: inside its snapshot's transaction."""

    def __init__(self, conn: Connection, push: Any) -> None:
        self._conn = conn
        self._push = push
        self.pushed = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)

    async def fetchval(self, query: str, *args: Any) -> Any:
        if not self.pushed and "plan_doomed" in query:
            await self._push()
            self.pushed = True
        return await self._conn.fetchval(query, *args)


async def push(pool: asyncpg.Pool[asyncpg.Record], tag: int, blob: int, repository: int) -> None:
    """What a registry does to rows a collection would remove: restore a tag, link a
    blob to a new manifest. Fails instead of waiting more than a second for a lock."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SET LOCAL lock_timeout = '1s'")
        await conn.execute("UPDATE tag SET lifetime_end_ms = NULL WHERE id = $1", tag)
        manifest = await conn.fetchval(
            "INSERT INTO manifest (repository_id, digest, media_type) VALUES ($1, $2, 'x')"
            " RETURNING id",
            repository,
            "sha256:" + "f" * 64,
        )
        await conn.execute(
            "INSERT INTO manifest_blob (repository_id, manifest_id, blob_id) VALUES ($1, $2, $3)",
            repository,
            manifest,
            blob,
        )


async def test_a_push_never_waits_on_the_plan(
    registry: Registry, db: asyncpg.Pool[asyncpg.Record]
) -> None:
    """A push in the middle of the plan (its snapshot open, its rounds half done) commits at
    once, and the plan still answers for the registry as it was when it began. The same
    push against a collection's row lock would wait, and fail."""
    ns = await registry.namespace()
    repo = await registry.repository(ns, "app")
    blob = await registry.blob(size=10)
    tag = await registry.expired_tag(repo, await registry.manifest(repo, blobs=(blob,)))
    conn = PushMidway(registry.conn, lambda: push(db, tag, blob, repo))

    planned = await plan_of(conn, PlanScope())  # type: ignore[arg-type]  # a wrapped connection

    assert conn.pushed
    assert dict(planned.now.removed) == {
        "registry.gc.tag-removed": 1,
        "registry.gc.manifest-removed": 1,
        "registry.gc.blob-removed": 1,
    }
    assert (
        await registry.conn.fetchval("SELECT lifetime_end_ms FROM tag WHERE id = $1", tag) is None
    )
    # The control: a collection holds the tag locked; the same push waits, and gives up.
    async with db.acquire() as locker, locker.transaction():
        await locker.execute("SELECT 1 FROM tag WHERE id = $1 FOR UPDATE", tag)
        with pytest.raises(asyncpg.LockNotAvailableError):
            await push(db, tag, blob, repo)


async def test_extreme_values_are_planned_like_any_other(
    registry: Registry, engine: Engine
) -> None:
    """Saturated lifetimes and windows, an upload that expired at -infinity, blob sizes at
    the bigint limit: the plan sums them without overflow, and the collection agrees."""
    forever = await registry.repository(await registry.namespace("edge", window_s=2**63 - 1), "r")
    now = await registry.repository(await registry.namespace("now", window_s=0), "r")
    huge = tuple([await registry.blob(size=2**63 - 1) for _ in range(2)])
    for repository, blobs in ((forever, (await registry.blob(),)), (now, huge)):
        await registry.conn.execute(
            "INSERT INTO tag (repository_id, manifest_id, name, lifetime_start_ms,"
            " lifetime_end_ms) VALUES ($1, $2, 'oldest', $3, $3)",
            repository,
            await registry.manifest(repository, blobs=blobs),
            -(2**63),
        )
    await registry.conn.execute(
        "INSERT INTO uploaded_blob (repository_id, blob_id, expires_at)"
        " VALUES ($1, $2, '-infinity')",
        now,
        await registry.blob(size=0),
    )

    planned = await plan_of(registry.conn, PlanScope())

    assert dict(planned.now.removed) == {  # the window that never ends keeps "edge"'s tag
        "registry.gc.tag-removed": 1,
        "registry.gc.manifest-removed": 1,
        "registry.gc.blob-removed": 3,
    }
    assert planned.now.bytes == 2 * (2**63 - 1)
    assert planned.now.uploads == 1
    assert planned.oldest_due is not None
    assert planned.oldest_due.due_at_ms == -(2**63)
    report = await engine.collect_many([Cause(forever, "c"), Cause(now, "c")])
    assert report.removed == planned.now.removed
    assert report.bytes_freed == planned.now.bytes


def plan_command(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return collector_command(database_url, "plan", *args)


def collector_command(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLLECTOR_DATABASE_URL": database_url, "COLLECTOR_LOG_LEVEL": "warning"}
    return subprocess.run(
        [sys.executable, "-m", "collector", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


async def test_plan_command_reports_the_namespace_as_json_and_tables(
    registry: Registry, database_url: str
) -> None:
    """`collector plan --namespace acme --json`: the counts, bytes and shares of the plan,
    largest share first; the kept objects with their reasons. Without --json, tables."""
    await known_registry(registry)

    done = await asyncio.to_thread(plan_command, database_url, "--namespace", "acme", "--json")

    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    # The command plans at the real time: in 2026 the fixture's "now" (2027) is ahead,
    # so only what is due by then is checked here; the numbers are the engine's above.
    assert set(result) == {
        "at",
        "horizon_s",
        "now",
        "by_horizon",
        "repositories",
        "namespaces",
        "largest",
        "oldest_due",
        "protected",
    }
    assert result["horizon_s"] == 7 * 86_400
    assert [n["namespace"] for n in result["namespaces"]] == ["acme"]
    by_repository = {r["repository"]: r for r in result["repositories"]}
    assert set(by_repository) <= {"acme/app", "acme/gone"}
    assert result["now"]["objects"] == sum(result["now"]["removed"].values())
    assert by_repository["acme/gone"]["now"]["bytes"] == 80 + 90
    assert result["now"]["removed"]["registry.gc.repo-purged"] == 1

    people = await asyncio.to_thread(plan_command, database_url, "--namespace", "acme")
    assert people.returncode == 0, people.stderr
    assert "what a collection would remove" in people.stdout + people.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--namespace", "nowhere"], "no namespace nowhere"),
        (["acme/app", "--namespace", "acme"], "not both"),
        (["--horizon", "7x"], "expected a duration like 7d"),
        (["--horizon", "99999d"], "beyond 3650 days"),
        (["nowhere/app"], "no repository nowhere/app"),
    ],
)
async def test_plan_command_refuses_what_it_cannot_plan(
    registry: Registry, database_url: str, args: list[str], message: str
) -> None:
    """A usage error: exit 2, one line naming what the user typed."""
    await registry.repository(await registry.namespace("acme"), "app")

    done = await asyncio.to_thread(plan_command, database_url, *args)

    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert message in lines[0]


async def test_collect_dry_run_summary_is_the_plan_of_the_collection(
    registry: Registry, database_url: str
) -> None:
    """`collect --all --purge --dry-run --summary --json`: the plan, due now, of what that
    collection would remove; nothing changes."""
    await known_registry(registry)
    before = await snapshot(registry.conn)

    done = await asyncio.to_thread(
        collector_command,
        database_url,
        "collect",
        "--all",
        "--purge",
        "--dry-run",
        "--summary",
        "--json",
    )

    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["horizon_s"] == 0
    assert result["now"] == result["by_horizon"]
    assert result["now"]["removed"]["registry.gc.repo-purged"] == 1
    assert await snapshot(registry.conn) == before
    without_purge = await asyncio.to_thread(
        collector_command, database_url, "collect", "--all", "--dry-run", "--summary", "--json"
    )
    assert "registry.gc.repo-purged" not in json.loads(without_purge.stdout)["now"]["removed"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--all", "--summary"], "--summary goes with --dry-run"),
        (["--all", "--dry-run", "--summary", "--orphans"], "does not plan the orphan sweep"),
        (["acme/app", "--purge", "--dry-run", "--summary"], "not marked for deletion"),
    ],
)
async def test_collect_summary_refuses_what_it_cannot_plan(
    registry: Registry, database_url: str, args: list[str], message: str
) -> None:
    await registry.repository(await registry.namespace("acme"), "app")

    done = await asyncio.to_thread(collector_command, database_url, "collect", *args)

    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert message in lines[0]
