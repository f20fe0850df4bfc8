"""The command line as users and scripts see it: output, exit codes, one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

from collector.clock import SystemClock
from tests.acceptance.conftest import CreateDatabase, run_collector, single_error_line
from tests.pipeline import pipeline_settings, read_topic, topics
from tests.registry import DAY_MS, Registry, outbox, snapshot


@dataclass
class Seeded:
    url: str
    conn: asyncpg.Connection[asyncpg.Record]
    registry: Registry
    repo: int
    live: int
    manifest: int
    blob: int


@pytest.fixture
async def seeded(create_database: CreateDatabase) -> AsyncIterator[Seeded]:
    """acme/app with one expired tag (manifest, blob) and acme/live with a live one."""
    url = await create_database("cli_test")
    conn = await asyncpg.connect(url)
    reg = Registry(conn, now_ms=SystemClock().now_ms())
    ns = await reg.namespace("acme")
    repo = await reg.repository(ns, "app")
    blob = await reg.blob(size=4096)
    manifest = await reg.manifest(repo, blobs=(blob,))
    await reg.expired_tag(repo, manifest, "v1")
    await reg.tag(repo, await reg.manifest(repo), "latest")
    live = await reg.repository(ns, "live")
    await reg.tag(live, await reg.manifest(live, blobs=(await reg.blob(),)), "latest")
    try:
        yield Seeded(url, conn, reg, repo, live, manifest, blob)
    finally:
        await conn.close()


async def test_collect_prints_removals_and_removes_them(seeded: Seeded) -> None:
    """`collect NS/REPO` removes what is due, prints each removal and a summary, exits 0."""
    result = run_collector("collect", "acme/app", "--no-publish", "--database-url", seeded.url)

    assert result.returncode == 0, result.stderr
    assert "removed tag-removed acme/app:v1" in result.stdout
    assert "removed manifest-removed acme/app@sha256:" in result.stdout
    assert "removed blob-removed sha256:" in result.stdout
    assert "4,096" in result.stderr  # bytes freed: the table, off stdout in a pipe
    assert "collect: 3 removal event(s) wait in gc.outbox" in result.stderr
    rows = await snapshot(seeded.conn)
    assert seeded.manifest not in rows["manifest"]
    assert seeded.blob not in rows["blob"]
    assert len(await outbox(seeded.conn)) == 3


async def test_dry_run_prints_the_same_removals_and_changes_nothing(seeded: Seeded) -> None:
    """`--dry-run` lists exactly what the real run then removes, and changes no row."""
    before = await snapshot(seeded.conn)

    dry = run_collector("collect", "--all", "--dry-run", "--database-url", seeded.url)

    assert dry.returncode == 0, dry.stderr
    assert await snapshot(seeded.conn) == before
    assert await outbox(seeded.conn) == []
    assert await seeded.conn.fetchval("SELECT count(*) FROM gc.candidate") == 0
    real = run_collector("collect", "--all", "--no-publish", "--database-url", seeded.url)
    assert real.returncode == 0, real.stderr
    would = sorted(
        line.removeprefix("would remove ")
        for line in dry.stdout.splitlines()
        if line.startswith("would remove ")
    )
    did = sorted(
        line.removeprefix("removed ")
        for line in real.stdout.splitlines()
        if line.startswith("removed ")
    )
    assert would == did
    assert len(did) == 3


async def test_purge_of_a_live_repository_exits_2_and_changes_nothing(seeded: Seeded) -> None:
    """A purge request for a repository not marked for deletion is refused up front."""
    before = await snapshot(seeded.conn)

    result = run_collector(
        "collect", "acme/live", "--purge", "--no-publish", "--database-url", seeded.url
    )

    assert result.returncode == 2
    assert "refusing to purge: acme/live" in single_error_line(result.stderr)
    assert await snapshot(seeded.conn) == before


async def test_purge_of_a_marked_repository(seeded: Seeded) -> None:
    """`--purge` on a marked repository removes it and everything in it."""
    await seeded.conn.execute(
        "UPDATE repository SET state = 'marked_for_deletion' WHERE id = $1", seeded.live
    )

    result = run_collector(
        "collect", "acme/live", "--purge", "--no-publish", "--database-url", seeded.url
    )

    assert result.returncode == 0, result.stderr
    assert "removed repo-purged acme/live" in result.stdout
    assert seeded.live not in (await snapshot(seeded.conn))["repository"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["collect"], "name repositories or give --all"),
        (["collect", "acme/app", "--all"], "name repositories or give --all"),
        (["collect", "acme"], "expected NAMESPACE/REPOSITORY"),
        (["collect", "acme/nope"], "no repository acme/nope"),
        (["collect", "--all", "--batch-size", "0"], "Invalid value for '--batch-size'"),
        (["collect", "--all", "--concurrency", "0"], "Invalid value for '--concurrency'"),
        (["collect", "--bogus"], "No such option"),
        (["frobnicate"], "No such command"),
        (["verify", "--log-level", "loud"], "invalid log level"),
    ],
)
async def test_usage_errors_exit_2_with_one_line(
    seeded: Seeded, args: list[str], message: str
) -> None:
    """Usage and configuration errors: exit 2, one line on stderr, nothing changed."""
    before = await snapshot(seeded.conn)

    result = run_collector(*args, "--database-url", seeded.url)

    assert result.returncode == 2, result.stderr
    assert message in single_error_line(result.stderr)
    assert await snapshot(seeded.conn) == before


async def test_bad_environment_exits_2(seeded: Seeded) -> None:
    """An invalid COLLECTOR_* variable is a configuration error, named on one line."""
    os.environ["COLLECTOR_PROTECTED_DIGESTS"] = "not-json"
    try:
        result = run_collector("collect", "--all", "--no-publish", "--database-url", seeded.url)
    finally:
        del os.environ["COLLECTOR_PROTECTED_DIGESTS"]
    assert result.returncode == 2
    assert single_error_line(result.stderr).startswith(
        "collector: error: invalid COLLECTOR_PROTECTED_DIGESTS: not valid JSON"
    )


async def test_verify_clean_registry_lists_due_garbage_and_exits_0(seeded: Seeded) -> None:
    """verify exits 0 without dangling references and reports the garbage still due."""
    result = run_collector("verify", "--json", "--database-url", seeded.url)

    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] is True
    assert report["dangling"] == []
    assert {"what": "tag past its window", "rows": 1, "sample": [1]} in report["garbage"]


async def test_verify_finds_a_dangling_reference_and_exits_1(seeded: Seeded) -> None:
    """With a foreign key dropped and a dangling row inserted, verify names it and exits 1."""
    await seeded.conn.execute(
        "ALTER TABLE manifest_blob DROP CONSTRAINT manifest_blob_blob_id_fkey"
    )
    await seeded.conn.execute(
        "INSERT INTO manifest_blob (repository_id, manifest_id, blob_id) VALUES ($1, $2, 999999)",
        seeded.repo,
        seeded.manifest,
    )

    result = run_collector("verify", "--database-url", seeded.url)

    assert result.returncode == 1
    assert "dangling references" in result.stderr  # a table: off stdout in a pipe
    assert "manifest_blob.blob_id" in result.stderr


async def test_unreachable_database_is_retried_then_exits_1_with_one_line() -> None:
    """A database that cannot be reached is retried for COLLECTOR_CONNECT_WAIT_S, then
    reported as a failure on one line."""
    os.environ["COLLECTOR_CONNECT_WAIT_S"] = "1"
    try:
        result = run_collector("verify", "--database-url", "postgresql://postgres@127.0.0.1:1/x")
    finally:
        del os.environ["COLLECTOR_CONNECT_WAIT_S"]

    assert result.returncode == 1
    assert "cannot reach the database" in single_error_line(result.stderr)
    assert "database_unreachable" in result.stderr  # the retries were logged


@pytest.mark.parametrize(
    "url",
    ["postgresql://postgres@127.0.0.1:5432/no_such_database", "postgresql://postgres@[oops"],
)
async def test_a_database_that_refuses_is_a_configuration_error(url: str) -> None:
    """No such database, or a malformed DSN: exit 2 at once with one line, no retries."""
    result = run_collector("verify", "--database-url", url)

    assert result.returncode == 2
    assert "cannot use the database" in single_error_line(result.stderr)


@pytest.mark.parametrize(
    "command",
    [
        ["collect", "--all"],
        ["collect", "acme/app"],
        ["verify"],
        ["publish", "repo-sweep", "acme/app"],
        ["scan"],
        ["sink", "blob-deleter", "--storage-root", "STORAGE"],
    ],
    ids=" ".join,
)
async def test_every_command_refuses_an_unmigrated_database_with_one_line(
    create_database: CreateDatabase, command: list[str], tmp_path: Path
) -> None:
    """Not a traceback about a missing table: exit 2, one line naming the fix."""
    bare = await create_database("cli_bare", template="template0")
    (tmp_path / "sha256").mkdir()  # a storage, for the blob deleter
    args = [str(tmp_path) if arg == "STORAGE" else arg for arg in command]

    result = run_collector(*args, env={"COLLECTOR_DATABASE_URL": bare})

    assert result.returncode == 2
    assert single_error_line(result.stderr) == (
        "collector: error: the database lacks migration 1 (registry): run `collector migrate` first"
    )


async def test_migrate_is_idempotent(create_database: CreateDatabase) -> None:
    """migrate on a migrated database applies nothing and says so."""
    url = await create_database("cli_migrate")

    result = run_collector("migrate", "--skip-topics", "--database-url", url)

    assert result.returncode == 0, result.stderr
    assert "database: up to date" in result.stdout


async def test_demo_runs_the_pipeline_over_kafka_and_verifies_clean(
    create_database: CreateDatabase, tmp_path: Path
) -> None:
    """The demo seeds a registry and its storage, publishes requests, serves them with
    the service, deletes the removed blobs' files, and ends with verify ok and a
    storage that matches the registry file for file. A fresh database is migrated first."""
    url = await create_database("cli_demo", template="template0")
    settings = pipeline_settings(url)
    env = {
        "COLLECTOR_TOPIC_REQUESTS": settings.topic_requests,
        "COLLECTOR_TOPIC_REMOVALS": settings.topic_removals,
        "COLLECTOR_TOPIC_DEAD_LETTER": settings.topic_dead_letter,
        "COLLECTOR_GROUP_ID": settings.group_id,
        "COLLECTOR_SINK_GROUP_ID": settings.group_id + ".blobs",
        "COLLECTOR_TOPIC_PARTITIONS": "3",
    }
    async with topics(settings):
        result = run_collector(
            "demo", "--repositories", "15", "--database-url", url, "--storage-root",
            str(tmp_path), env=env,
        )  # fmt: skip
        removals = await read_topic(settings.topic_removals)
        letters = await read_topic(settings.topic_dead_letter, partitions=1)
        audits = [run_collector("audit", "--json", env=env) for _ in range(2)]

    assert result.returncode == 0, result.stderr
    assert "repo-purged" in result.stdout
    assert "verify: ok" in result.stdout
    assert "0 orphaned, 0 missing" in result.stdout
    assert letters == []
    conn = await asyncpg.connect(url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM gc.request WHERE outcome IS NULL") == 0
        assert await conn.fetchval("SELECT count(*) FROM gc.outbox WHERE published_at IS NULL") == 0
        assert await conn.fetchval("SELECT count(*) FROM gc.candidate") == 0
        outbox = {str(r["event_id"]) for r in await conn.fetch("SELECT event_id FROM gc.outbox")}
        digests = {r["digest"] for r in await conn.fetch("SELECT digest FROM blob")}
    finally:
        await conn.close()
    assert outbox
    assert {r.event["id"] for r in removals} == outbox
    assert stored_digests(tmp_path) == digests
    # The audit replay links every removal to the request that caused it, the same twice.
    assert audits[0].returncode == 0, audits[0].stderr
    assert audits[0].stdout == audits[1].stdout
    *lines, summary = [json.loads(line) for line in audits[0].stdout.splitlines()]
    assert summary["summary"]["removals"] == len(outbox)
    assert summary["summary"]["unknown_cause"]["count"] == 0
    assert {line["id"] for line in lines} == outbox
    for line in lines:
        if "repository_id" in line["data"]:
            data = line["data"]
            assert line["cause"]["repository"] == f"{data['namespace']}/{data['repository']}"


def stored_digests(root: Path) -> set[str]:
    """The digests a storage folder laid out as ``<algorithm>/<ab>/<hex>`` holds."""
    return {f"{path.parent.parent.name}:{path.name}" for path in root.glob("*/*/*")}


async def test_window_not_elapsed_is_left_for_later(create_database: CreateDatabase) -> None:
    """A tag that ended yesterday in a 14-day namespace is not collected by the CLI."""
    url = await create_database("cli_window")
    conn = await asyncpg.connect(url)
    try:
        now = SystemClock().now_ms()
        reg = Registry(conn, now_ms=now)
        repo = await reg.repository(await reg.namespace("acme"), "app")
        tag = await reg.tag(repo, await reg.manifest(repo), "recent", end_ms=now - DAY_MS)

        result = run_collector("collect", "acme/app", "--no-publish", "--database-url", url)

        assert result.returncode == 0, result.stderr
        assert tag in (await snapshot(conn))["tag"]
    finally:
        await conn.close()


def test_every_option_s_help_names_its_environment_variable() -> None:
    """Help text is plain, so the "[env: …]" hints survive; every setting an option
    overrides names the variable that sets it otherwise."""
    for command in (["run"], ["collect"], ["sink", "blob-deleter"], ["audit"]):
        result = run_collector(*command, "--help")
        assert result.returncode == 0, result.stderr
        for variable in ("COLLECTOR_DATABASE_URL", "COLLECTOR_LOG_LEVEL"):
            if command == ["audit"] and variable == "COLLECTOR_DATABASE_URL":
                continue  # the audit reads Kafka only
            assert variable in " ".join(result.stdout.split()), (command, variable)


def test_scripts_bootstrap_run_instead_of_sourced_says_how_to_use_it() -> None:
    """scripts/bootstrap is sourced by scripts/test and scripts/demo; run on its own it
    used to fail with 'Permission denied' (exit 126). Now it says what to do, exit 2."""
    script = Path(__file__).resolve().parents[2] / "scripts" / "bootstrap"

    result = subprocess.run([str(script)], capture_output=True, text=True, timeout=30)

    assert result.returncode == 2
    assert result.stderr.startswith("scripts/bootstrap is meant to be sourced")
