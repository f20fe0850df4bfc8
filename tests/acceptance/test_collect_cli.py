"""`collect` as its users meet it: its events published with no service running, a
summary scripts can parse, and a clean end on SIGINT and SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal

import asyncpg
import pytest

from collector.clock import SystemClock
from collector.demo.seed import Shape, delete_repositories, expire_tags, plan_registry, write
from tests.acceptance.conftest import (
    CreateDatabase,
    collector_command,
    environment,
    removals,
    run_collector,
    state,
)
from tests.pipeline import pipeline_settings, read_topic, topics
from tests.registry import Registry, outbox

LONG_ARGS = ("collect", "--all", "--purge", "--no-publish", "--batch-size", "5")


@pytest.fixture
async def expired(create_database: CreateDatabase) -> str:
    """acme/app with one expired tag on a manifest with one blob: three removals."""
    url = await create_database("collect_cli")
    conn = await asyncpg.connect(url)
    try:
        registry = Registry(conn, now_ms=SystemClock().now_ms())
        repository = await registry.repository(await registry.namespace("acme"), "app")
        manifest = await registry.manifest(repository, blobs=(await registry.blob(size=512),))
        await registry.expired_tag(repository, manifest, "v1")
    finally:
        await conn.close()
    return url


async def test_collect_publishes_its_events_with_no_service_running(expired: str) -> None:
    """Every removal event `collect` committed is on the removals topic when it exits,
    and `audit` names `collector collect` as their cause."""
    async with topics(pipeline_settings(expired)) as settings:
        result = await asyncio.to_thread(
            run_collector, "collect", "acme/app", env=environment(settings, expired)
        )
        assert result.returncode == 0, result.stderr
        assert (
            f"collect: 3 removal event(s) published to {settings.topic_removals}" in result.stderr
        )
        assert "wait in gc.outbox" not in result.stderr

        published = [r.event["id"] for r in await read_topic(settings.topic_removals)]
        audit = await asyncio.to_thread(
            run_collector, "audit", "--json", env=environment(settings, expired)
        )
    # The audit names the command run behind each removal, with no request on the topic.
    assert audit.returncode == 0, audit.stderr
    *removals_seen, _ = map(json.loads, audit.stdout.splitlines())
    assert sorted(line["id"] for line in removals_seen) == sorted(published)
    assert {line["cause"]["type"] for line in removals_seen} == {"collector collect"}
    assert all(line["causationid"].startswith("cli-") for line in removals_seen)
    conn = await asyncpg.connect(expired)
    try:
        committed = [event["id"] for event in await outbox(conn)]
        unpublished = await conn.fetchval(
            "SELECT count(*) FROM gc.outbox WHERE published_at IS NULL"
        )
    finally:
        await conn.close()
    assert len(committed) == 3
    assert sorted(published) == sorted(committed)
    assert unpublished == 0


async def test_collect_with_no_broker_says_how_many_events_wait(expired: str) -> None:
    """Without a broker the collection still commits; collect says its events wait and
    for whom, after waiting COLLECTOR_CONNECT_WAIT_S for a broker."""
    env = {"COLLECTOR_KAFKA_BOOTSTRAP": "127.0.0.1:1", "COLLECTOR_CONNECT_WAIT_S": "1"}
    result = run_collector("collect", "acme/app", "--database-url", expired, env=env)

    assert result.returncode == 0, result.stderr
    assert "collect: 3 removal event(s) wait in gc.outbox (none left for 1 s" in result.stderr
    assert "127.0.0.1:1 reachable?" in result.stderr
    assert "published to" not in result.stderr


async def test_collect_json_is_one_object_per_line_the_summary_last(expired: str) -> None:
    result = run_collector(
        "collect", "acme/app", "--json", "--no-publish", "--database-url", expired
    )

    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    removed = sorted(line["removed"] for line in lines[:-1])
    assert removed == ["blob-removed", "manifest-removed", "tag-removed"]
    tag = next(line for line in lines if line.get("removed") == "tag-removed")
    assert tag["subject"] == "acme/app:v1"
    assert tag["data"]["tag"] == "v1"
    summary = lines[-1]["summary"]
    assert summary["total"] == 3
    assert summary["bytes_freed"] == 512
    assert summary["events_published"] == 0
    assert summary["events_waiting"] == 3
    assert summary["dry_run"] is False
    assert "summary" not in result.stderr  # no table among the JSON either


async def test_collect_piped_keeps_its_table_off_stdout(expired: str) -> None:
    """Scripts reading stdout get the removal lines only; the table goes to stderr."""
    result = run_collector("collect", "acme/app", "--no-publish", "--database-url", expired)

    assert result.returncode == 0, result.stderr
    assert all(line.startswith("removed ") for line in result.stdout.splitlines())
    assert "bytes freed" in result.stderr


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
async def test_a_signal_stops_collect_with_one_line_and_a_rerun_finishes(
    create_database: CreateDatabase, signum: signal.Signals
) -> None:
    """SIGINT or SIGTERM mid-collection: one line naming the signal and how many removals
    committed (as many as the outbox holds), exit 128 + N; a rerun ends in the state of
    an uninterrupted run, with every removal reported once."""
    name = signum.name.lower()
    source = await create_database(f"signal_source_{name}")
    conn = await asyncpg.connect(source)
    try:
        now_ms = SystemClock().now_ms()
        plan = plan_registry(Shape(repositories=30, manifests_per_repository=6), now_ms=now_ms)
        await write(conn, plan)
        await expire_tags(conn, plan.run, fraction=0.5, now_ms=now_ms, seed=3)
        await delete_repositories(conn, plan.run, fraction=0.2, seed=3)
    finally:
        await conn.close()
    straight = await create_database(f"signal_straight_{name}", template=f"signal_source_{name}")
    stopped = await create_database(f"signal_stopped_{name}", template=f"signal_source_{name}")
    done = run_collector(*LONG_ARGS, "--database-url", straight)
    assert done.returncode == 0, done.stderr
    total = sum((await removals(straight)).values())

    process = await asyncio.create_subprocess_exec(
        *collector_command(*LONG_ARGS, "--database-url", stopped),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "COLLECTOR_LOG_LEVEL": "warning"},
    )
    assert process.stdout is not None
    for _ in range(20):  # well into the collection, far from its end
        assert (await process.stdout.readline()).startswith(b"removed "), "collect ended early"
    process.send_signal(signum)
    _, stderr = await asyncio.wait_for(process.communicate(), 60)

    assert process.returncode == 128 + signum
    lines = stderr.decode().splitlines()
    assert len(lines) == 1, lines
    committed = sum((await removals(stopped)).values())
    assert 20 <= committed < total
    assert lines[0] == (
        f"collector: collect interrupted by {signum.name}: {committed:,} removal(s) committed,"
        " their events in gc.outbox; the rest is still due and the same command finishes it"
    )
    finish = run_collector(*LONG_ARGS, "--database-url", stopped)
    assert finish.returncode == 0, finish.stderr
    assert await state(stopped) == await state(straight)
    reported = await removals(stopped)
    assert reported == await removals(straight)
    assert max(reported.values()) == 1, "every removal reported once"
