"""Orphans from the command line: what verify calls garbage, `collect --orphans` and
`scan --orphans` collect; each rule has one definition, shared by verify and the
collectors; a sweep killed with SIGKILL and restarted ends as an uninterrupted one."""

from __future__ import annotations

import asyncio
import json
import os
from collections import Counter

import asyncpg

from tests.acceptance.conftest import (
    CreateDatabase,
    collector_command,
    kill_when,
    removals,
    run_collector,
    state,
)
from tests.registry import REGISTRY_TABLES, outbox, snapshot

#: Rows created this long ago are past the default grace period (3600 s).
OLD = "now() - interval '2 hours'"
#: The SIGKILL test's registry, times this (CI runs it at 1: 19k orphans).
SCALE = int(os.environ.get("COLLECTOR_TEST_SWEEP_SCALE", "1"))
#: A sweep is in the middle of its pass over the table of kind $1.
MID_PASS = "SELECT EXISTS (SELECT FROM gc.sweep WHERE kind = $1 AND until_id > 0 AND last_id > 0)"


async def orphans(url: str, manifests: int, blobs: int, labels: int, images: int) -> None:
    """A registry whose only content is old orphans: untagged manifests with a layer each,
    lone blobs and labels, and legacy images linked from nothing."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(
            f"""
            INSERT INTO namespace (name) VALUES ('acme');
            INSERT INTO repository (namespace_id, name) VALUES (1, 'app');
            INSERT INTO blob (digest, size, created_at)
                SELECT 'sha256:' || lpad(to_hex(n), 64, '0'), n, {OLD}
                FROM generate_series(1, {manifests + blobs + images}) AS n;
            INSERT INTO blob_placement (blob_id, location) SELECT id, 's3' FROM blob;
            INSERT INTO manifest (repository_id, digest, media_type, created_at)
                SELECT 1, 'sha256:m' || n, 'm', {OLD} FROM generate_series(1, {manifests}) AS n;
            INSERT INTO manifest_blob (repository_id, manifest_id, blob_id)
                SELECT 1, id, id FROM manifest;
            INSERT INTO label (key, value, created_at)
                SELECT 'k' || n, 'v', {OLD} FROM generate_series(1, {labels}) AS n;
            INSERT INTO image (repository_id, docker_image_id, storage_id, created_at)
                SELECT 1, 'i' || n, {manifests + blobs} + n, {OLD}
                FROM generate_series(1, {images}) AS n;
            """
        )
    finally:
        await conn.close()


async def test_verify_lists_an_old_unlinked_blob_until_collect_orphans_removes_it(
    create_database: CreateDatabase,
) -> None:
    """The leak the sweep closes: a blob inserted and never linked is due garbage that no
    collection without --orphans touches; `collect --all --purge --orphans` removes it with
    its event and verify then reports nothing due."""
    url = await create_database("orphans_cli")
    await orphans(url, manifests=0, blobs=1, labels=0, images=0)

    before = json.loads(run_collector("verify", "--json", "--database-url", url).stdout)
    assert before["garbage"] == [{"what": "unreferenced blob", "rows": 1, "sample": [1]}]
    plain = run_collector("collect", "--all", "--purge", "--no-publish", "--database-url", url)
    assert plain.returncode == 0, plain.stderr
    assert "removed" not in plain.stdout

    swept = run_collector(
        "collect", "--all", "--purge", "--orphans", "--no-publish", "--database-url", url
    )

    assert swept.returncode == 0, swept.stderr
    assert "removed blob-removed sha256:" in swept.stdout
    assert "orphan sweep: 1 rows judged" in swept.stderr
    after = json.loads(run_collector("verify", "--json", "--database-url", url).stdout)
    assert (after["garbage"], after["queued"], after["grace"]) == ([], [], [])


async def test_scan_orphans_sweeps_and_collects_what_it_found(
    create_database: CreateDatabase,
) -> None:
    """`scan --orphans` collects the old orphans itself, with a causation id of its own
    (no request to publish here, so no broker is needed)."""
    url = await create_database("orphans_scan")
    await orphans(url, manifests=3, blobs=2, labels=2, images=1)

    result = run_collector("scan", "--orphans", "--database-url", url)

    assert result.returncode == 0, result.stderr
    # The blob pass judges the 6 blobs while the manifests and the image still hold 4.
    assert "sweep: 12 rows judged" in result.stderr
    assert "8 orphans queued; removed 12 objects" in result.stderr
    conn = await asyncpg.connect(url)
    try:
        rows = await snapshot(conn)
        assert rows["manifest"] == rows["blob"] == rows["label"] == rows["image"] == set()
        events = [
            json.loads(row["event"]) for row in await conn.fetch("SELECT event FROM gc.outbox")
        ]
        assert len(events) == 12
        causes = {event["causationid"] for event in events}
        assert len(causes) == 1
        assert causes.pop().startswith("scan-")
    finally:
        await conn.close()


async def test_one_rule_one_definition_changes_verify_the_collectors_and_the_sweep(
    create_database: CreateDatabase,
) -> None:
    """Mutation check: redefine the label rule in its one place (a label with key 'keep'
    is kept alive too). verify stops listing such a label, a collection that frees it keeps
    it, and the sweep leaves it: nothing else held a copy of the rule."""
    url = await create_database("orphans_rule")
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(
            """
            CREATE OR REPLACE FUNCTION gc.unreferenced_labels()
            RETURNS TABLE (id bigint, created_at timestamptz)
            LANGUAGE sql STABLE AS $$
                SELECT l.id, l.created_at FROM label l
                WHERE NOT EXISTS (SELECT 1 FROM manifest_label ml WHERE ml.label_id = l.id)
                  AND l.key <> 'keep'
            $$;
            INSERT INTO namespace (name) VALUES ('acme');
            INSERT INTO repository (namespace_id, name) VALUES (1, 'app');
            INSERT INTO label (id, key, value, created_at) VALUES
                (1, 'keep', 'v', now() - interval '2 hours'),
                (2, 'lone', 'v', now() - interval '2 hours'),
                (3, 'keep', 'v', now() - interval '2 hours'),
                (4, 'freed', 'v', now() - interval '2 hours');
            INSERT INTO manifest (id, repository_id, digest, media_type)
                VALUES (1, 1, 'sha256:a', 'm');
            INSERT INTO manifest_label (repository_id, manifest_id, label_id)
                VALUES (1, 1, 3), (1, 1, 4);
            INSERT INTO tag (repository_id, manifest_id, name, lifetime_start_ms, lifetime_end_ms)
                VALUES (1, 1, 'old', 0, 1);
            """
        )
        report = json.loads(run_collector("verify", "--json", "--database-url", url).stdout)
        assert {"what": "unreferenced label", "rows": 1, "sample": [2]} in report["garbage"]

        result = run_collector(
            "collect", "--all", "--orphans", "--no-publish", "--database-url", url
        )

        assert result.returncode == 0, result.stderr
        labels = {row["id"] for row in await conn.fetch("SELECT id FROM label")}
        assert labels == {1, 3}  # the 'keep' labels: orphan (1) and freed by the tag (3)
        report = json.loads(run_collector("verify", "--json", "--database-url", url).stdout)
        assert report["garbage"] == []
    finally:
        await conn.close()


async def test_sigkill_during_a_sweep_then_restart_equals_an_uninterrupted_sweep(
    create_database: CreateDatabase,
) -> None:
    """Kill `collect --all --orphans` in the middle of its passes over two tables, restart
    it: the same rows remain as after an uninterrupted sweep, every removed row has its
    event exactly once, and no candidate or pass is left behind."""
    source = await create_database("sweep_source")
    await orphans(
        source, manifests=6000 * SCALE, blobs=3000 * SCALE, labels=2000 * SCALE, images=1000 * SCALE
    )
    straight = await create_database("sweep_straight", template="sweep_source")
    killed = await create_database("sweep_killed", template="sweep_source")
    args = ("collect", "--all", "--orphans", "--no-publish", "--batch-size", "200")
    env = {"COLLECTOR_ORPHAN_SWEEP_SPAN": str(300 * SCALE)}

    done = run_collector(*args, "--database-url", straight, env=env)
    assert done.returncode == 0, done.stderr
    expected = await removals(straight)

    kills = 0
    for kind in ("manifest", "blob"):
        process = await asyncio.create_subprocess_exec(
            *collector_command(*args, "--database-url", killed),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            env={**os.environ, "COLLECTOR_LOG_LEVEL": "warning", **env},
        )
        kills += await kill_when(killed, process, MID_PASS, kind, jitter_s=0.02)
    assert kills == 2, "the sweep must have been killed mid-pass twice"
    finish = run_collector(*args, "--database-url", killed, env=env)
    assert finish.returncode == 0, finish.stderr

    assert await state(killed) == await state(straight)
    reported = await removals(killed)
    assert reported == expected
    assert max(reported.values()) == 1, "every removal reported once"
    conn = await asyncpg.connect(killed)
    try:
        rows = await snapshot(conn)
        left = {table for table in REGISTRY_TABLES if rows[table]}
        assert left == {"namespace", "repository"}
        types = Counter(event["type"] for event in await outbox(conn))
        assert types == {
            "registry.gc.manifest-removed": 6000 * SCALE,
            "registry.gc.blob-removed": 10000 * SCALE,
            "registry.gc.label-removed": 2000 * SCALE,
            "registry.gc.legacy-image-removed": 1000 * SCALE,
        }
        passes = await conn.fetch("SELECT until_id FROM gc.sweep")
        assert [row["until_id"] for row in passes] == [None] * 4
    finally:
        await conn.close()
