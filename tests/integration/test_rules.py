"""The rules of CONTRACT §3 as the gc functions define them, at the edges of what a
registry row can hold."""

from __future__ import annotations

import json

import asyncpg
import pytest

from collector import publish
from collector.engine import Engine
from collector.verify import verify
from collector.work import queue
from collector.work.queue import WorkItem
from tests.registry import DAY_MS, NOW_MS, Registry, exists

BIGINT_MAX = 2**63 - 1
BIGINT_MIN = -(2**63)


@pytest.mark.parametrize(
    ("end_ms", "window_s", "due_at_ms"),
    [
        (9_223_372_036_854_775_000, 1_209_600, BIGINT_MAX),
        (NOW_MS, 9_300_000_000_000_000, BIGINT_MAX),
        (BIGINT_MAX, BIGINT_MAX, BIGINT_MAX),
        (BIGINT_MIN, -1, BIGINT_MIN),
        (BIGINT_MIN, BIGINT_MIN, BIGINT_MIN),
        (1_000, 2, 3_000),
    ],
)
async def test_when_a_tag_falls_due_saturates_at_the_bigint_bounds(
    db: asyncpg.Pool[asyncpg.Record], end_ms: int, window_s: int, due_at_ms: int
) -> None:
    """Lifetime end plus window never overflows: it saturates."""
    async with db.acquire() as conn:
        assert await conn.fetchval("SELECT gc.tag_due_at_ms($1, $2)", end_ms, window_s) == due_at_ms


async def test_extreme_lifetimes_and_windows_stop_nothing(
    registry: Registry, engine: Engine
) -> None:
    """A tag that ends at the end of time, a namespace whose window is longer than time, and
    a tag that ended before it began: collection, verify, scan and a worker's look at the
    request all go on; only the tag whose due time saturated low is due."""
    conn = registry.conn
    forever = await registry.namespace("forever", window_s=9_300_000_000_000_000)
    big = await registry.repository(forever, "big")
    late = await registry.tag(big, await registry.manifest(big), "late", end_ms=NOW_MS)
    never = await registry.tag(big, await registry.manifest(big), "never", end_ms=BIGINT_MAX)
    backwards = await registry.namespace("backwards", window_s=-(2**62))
    repo = await registry.repository(backwards, "r")
    ancient_ms = BIGINT_MIN + 30 * DAY_MS  # the helper starts a tag 30 days before its end
    ancient = await registry.tag(repo, await registry.manifest(repo), "old", end_ms=ancient_ms)

    report = await engine.collect_all(causation_id="c", purge_marked=True)
    found = await verify(conn, now_ms=NOW_MS, protected_digests=[], orphan_grace_s=3600)
    scanned = await publish.scan(conn, NOW_MS)
    item = WorkItem("e", "tag-expired", big, "forever/big", tag_id=late, lifetime_end_ms=NOW_MS)
    tag = await queue.expiring_tag(conn, item, NOW_MS)

    assert report.removed["registry.gc.tag-removed"] == 1
    assert not await exists(conn, "tag", ancient)
    assert await exists(conn, "tag", late)
    assert await exists(conn, "tag", never)
    assert found.ok
    assert found.garbage == []
    assert scanned == publish.Scan()
    assert tag is not None
    assert (tag.due, tag.due_at_ms) == (False, BIGINT_MAX)


async def test_names_no_request_can_carry_stop_nothing(registry: Registry, engine: Engine) -> None:
    """A namespace named "" and a repository name of 2,000 characters are rows a registry
    can hold but no request may carry (CONTRACT §2.1 bounds what comes from outside): a
    scan requests the other repositories and names these two as unrequestable, and a
    collection removes their garbage with events that describe the rows as they are."""
    conn = registry.conn
    empty = await registry.repository(await registry.namespace(""), "r")
    acme = await registry.namespace("acme")
    long_name = "x" * 2000
    long = await registry.repository(acme, long_name)
    web = await registry.repository(acme, "web")
    for repository in (empty, long, web):
        await registry.expired_tag(repository, await registry.manifest(repository))

    scanned = await publish.scan(conn, registry.now_ms)
    report = await engine.collect_all(causation_id="c")

    assert [(r.repository_id, r.repository_path) for r in scanned.requests] == [(web, "acme/web")]
    reasons = {skipped.repository_id: skipped.reason for skipped in scanned.unrequestable}
    assert set(reasons) == {empty, long}
    assert "namespace: String should have at least 1 character" in reasons[empty]
    assert "repository: String should have at most 1024 characters" in reasons[long]
    assert report.removed["registry.gc.tag-removed"] == 3
    assert report.removed["registry.gc.manifest-removed"] == 3
    events = [json.loads(row["event"]) for row in await conn.fetch("SELECT event FROM gc.outbox")]
    paths = {(e["data"]["namespace"], e["data"]["repository"]) for e in events}
    assert paths == {("", "r"), ("acme", long_name), ("acme", "web")}
    found = await verify(conn, now_ms=registry.now_ms, protected_digests=[], orphan_grace_s=3600)
    assert found.ok
    assert found.garbage == []
