"""`collector publish` and `collector scan`: requests on the topic, readable by the intake."""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient

from collector.clock import SystemClock
from collector.config import Settings
from collector.kafka import client_options, ensure_topics
from events import LegacyTagExpired, RepoDeleted, RepoSweep, Request, TagExpired, decode_request
from tests.acceptance.conftest import (
    CreateDatabase,
    collector_command,
    run_collector,
    single_error_line,
)
from tests.brokers import SpareBroker
from tests.registry import DAY_MS, Registry


@dataclass
class Setup:
    url: str
    topic: str
    env: dict[str, str]
    tag_id: int
    lifetime_end_ms: int
    repository_tag_id: int
    lifetime_end_ts: int


@pytest.fixture
async def setup(create_database: CreateDatabase) -> AsyncIterator[Setup]:
    """acme/app with an expired tag v1, acme/gone marked for deletion, acme/live idle;
    a requests topic of the test's own."""
    url = await create_database("publish_test")
    conn = await asyncpg.connect(url)
    try:
        reg = Registry(conn, now_ms=SystemClock().now_ms())
        ns = await reg.namespace("acme")
        app = await reg.repository(ns, "app")
        tag_id = await reg.expired_tag(app, await reg.manifest(app), "v1")
        await reg.tag(app, await reg.manifest(app), "v1")  # the alive v1 is not the one named
        await reg.repository(ns, "gone", state="marked_for_deletion")
        live = await reg.repository(ns, "live")
        await reg.tag(live, await reg.manifest(live), "latest", end_ms=reg.now_ms - DAY_MS)
        end_ms = await conn.fetchval("SELECT lifetime_end_ms FROM tag WHERE id = $1", tag_id)
        image = await reg.image(app, await reg.blob())
        await reg.repository_tag(app, image, "v0", end_ts=reg.now_ms // 1000 - 7 * 86_400)
        legacy_id = await reg.repository_tag(app, image, "v0", end_ts=reg.now_ms // 1000 - 3600)
        await reg.repository_tag(app, image, "v0")  # the alive v0 is not the one named
        end_ts = await conn.fetchval(
            "SELECT lifetime_end_ts FROM repository_tag WHERE id = $1", legacy_id
        )
    finally:
        await conn.close()
    suffix = uuid.uuid4().hex[:12]
    settings = Settings(
        topic_requests=f"test.requests.{suffix}",
        topic_removals=f"test.removals.{suffix}",
        topic_dead_letter=f"test.dead-letter.{suffix}",
        topic_partitions=2,
    )
    await ensure_topics(settings)
    env = {
        "COLLECTOR_DATABASE_URL": url,
        "COLLECTOR_TOPIC_REQUESTS": settings.topic_requests,
    }
    yield Setup(url, settings.topic_requests, env, tag_id, end_ms, legacy_id, end_ts)
    admin = AIOKafkaAdminClient(**client_options(settings))
    await admin.start()
    try:
        await admin.delete_topics(
            [settings.topic_requests, settings.topic_removals, settings.topic_dead_letter]
        )
    finally:
        await admin.close()


def collector(setup: Setup, *args: str) -> Any:
    os.environ.update(setup.env)
    try:
        return run_collector(*args)
    finally:
        for name in setup.env:
            del os.environ[name]


async def received(
    topic: str, count: int, *, via: Settings | None = None
) -> list[tuple[bytes, Request]]:
    """The first ``count`` records of the topic, decoded as the intake will (from the
    broker of ``via``, the shared one by default)."""
    consumer = AIOKafkaConsumer(
        topic,
        group_id=f"test-{uuid.uuid4().hex}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        **client_options(via or Settings()),
    )
    await consumer.start()
    records: list[Any] = []
    try:
        async with asyncio.timeout(30):
            while len(records) < count:
                batches = await consumer.getmany(timeout_ms=500)
                records.extend(r for batch in batches.values() for r in batch)
    finally:
        await consumer.stop()
    return [(r.key, decode_request(key=r.key, value=r.value, headers=r.headers)) for r in records]


async def test_publish_tag_expired_puts_a_valid_request_on_the_topic(setup: Setup) -> None:
    """The request names the latest ended tag with the database's ids, keyed by repository."""
    result = collector(setup, "publish", "tag-expired", "acme/app", "v1")

    assert result.returncode == 0, result.stderr
    [(key, request)] = await received(setup.topic, 1)
    assert key == b"acme/app"
    assert isinstance(request.data, TagExpired)
    assert (request.data.tag_id, request.data.lifetime_end_ms) == (
        setup.tag_id,
        setup.lifetime_end_ms,
    )
    assert f"id={request.event.id}" in result.stdout


async def test_publish_legacy_tag_expired_names_the_latest_ended_pre_oci_tag(
    setup: Setup,
) -> None:
    """The request names the pre-OCI tag of that name that ended last, with its lifetime end
    in seconds, keyed by repository."""
    result = collector(setup, "publish", "legacy-tag-expired", "acme/app", "v0")

    assert result.returncode == 0, result.stderr
    [(key, request)] = await received(setup.topic, 1)
    assert key == b"acme/app"
    assert isinstance(request.data, LegacyTagExpired)
    assert (request.data.repository_tag_id, request.data.lifetime_end_ts) == (
        setup.repository_tag_id,
        setup.lifetime_end_ts,
    )
    assert "published legacy-tag-expired" in result.stdout


async def test_publish_repo_deleted_and_repo_sweep(setup: Setup) -> None:
    """Both repository requests decode to their types, in the order published."""
    assert collector(setup, "publish", "repo-deleted", "acme/gone").returncode == 0
    assert collector(setup, "publish", "repo-sweep", "acme/live").returncode == 0

    requests = sorted(
        (type(request.data).__name__, key) for key, request in await received(setup.topic, 2)
    )
    assert requests == [("RepoDeleted", b"acme/gone"), ("RepoSweep", b"acme/live")]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["publish", "tag-expired", "acme/app", "latest"], "no ended tag acme/app:latest"),
        (
            ["publish", "legacy-tag-expired", "acme/app", "v1"],
            "no ended pre-OCI tag acme/app:v1",
        ),
        (["publish", "repo-sweep", "acme/nope"], "no repository acme/nope"),
        (["publish", "repo-deleted"], "Missing argument"),
        (["publish"], "missing command"),
    ],
)
async def test_publish_usage_errors_exit_2(setup: Setup, args: list[str], message: str) -> None:
    """A request that names nothing real is refused before anything is published."""
    result = collector(setup, *args)

    assert result.returncode == 2
    assert message in result.stderr


async def test_scan_publishes_a_request_for_every_repository_with_work(setup: Setup) -> None:
    """Due tags give repo-sweep, a mark gives repo-deleted; a tag still inside its window
    gives nothing."""
    result = collector(setup, "scan")

    assert result.returncode == 0, result.stderr
    requests = {key: request.data for key, request in await received(setup.topic, 2)}
    assert set(requests) == {b"acme/app", b"acme/gone"}
    assert isinstance(requests[b"acme/app"], RepoSweep)
    assert isinstance(requests[b"acme/gone"], RepoDeleted)


async def test_scan_names_a_repository_no_request_can_carry_and_publishes_the_rest(
    setup: Setup,
) -> None:
    """A repository whose name is longer than a request carries: scan still publishes the
    others, names that row on one line of stderr and exits 1; publishing for it by name
    is a usage error (exit 2) naming it."""
    long_name = "x" * 2000
    conn = await asyncpg.connect(setup.url)
    try:
        reg = Registry(conn, now_ms=SystemClock().now_ms())
        namespace = await conn.fetchval("SELECT id FROM namespace WHERE name = 'acme'")
        long = await reg.repository(namespace, long_name)
        await reg.expired_tag(long, await reg.manifest(long))
    finally:
        await conn.close()

    scan = collector(setup, "scan")
    sweep = collector(setup, "publish", "repo-sweep", f"acme/{long_name}")

    assert scan.returncode == 1, scan.stderr
    requests = {key for key, _ in await received(setup.topic, 2)}
    assert requests == {b"acme/app", b"acme/gone"}
    [skipped] = [line for line in scan.stderr.splitlines() if "skipped" in line]
    assert skipped.startswith(f"scan: repository {long} skipped")
    assert "repository: String should have at most 1024 characters" in skipped
    assert sweep.returncode == 2
    assert single_error_line(sweep.stderr).startswith(
        f"collector: error: repository {long} cannot be named in a request"
    )


async def test_scan_every_repeats_until_sigterm(setup: Setup) -> None:
    """`scan --every` scans again and again and stops cleanly on SIGTERM: one line saying
    what it published, exit 143."""
    process = await asyncio.create_subprocess_exec(
        *collector_command("scan", "--every", "0.2"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **setup.env, "COLLECTOR_LOG_LEVEL": "warning"},
    )
    await received(setup.topic, 4)  # two scans' worth
    process.send_signal(signal.SIGTERM)
    _, stderr = await asyncio.wait_for(process.communicate(), 30)

    assert process.returncode == 128 + signal.SIGTERM, stderr
    lines = stderr.decode().splitlines()
    assert lines.count("scan: 2 request(s) published") >= 2
    scans = lines.count("scan: 2 request(s) published")
    assert lines[-1] == (
        f"collector: scan stopped by SIGTERM: {2 * scans} request(s) published in {scans}"
        " complete scan(s); the next scan finds what this one did not reach"
    )


async def test_scan_every_waits_out_a_broker_outage(setup: Setup, tmp_path: Path) -> None:
    """`scan --every` started while its broker is down keeps going (a warning per failed
    scan, with backoff) instead of exiting, and publishes once the broker is there."""
    spare = SpareBroker(tmp_path / "services", 19292, 19293)
    settings = Settings(kafka_bootstrap=spare.bootstrap, topic_requests=setup.topic)
    process = await asyncio.create_subprocess_exec(
        *collector_command("scan", "--every", "0.2"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={
            **os.environ,
            **setup.env,
            "COLLECTOR_KAFKA_BOOTSTRAP": spare.bootstrap,
            "COLLECTOR_CONNECT_WAIT_S": "0.5",
            "COLLECTOR_LOG_LEVEL": "warning",
        },
    )
    assert process.stdout is not None
    assert process.stderr is not None
    try:
        await lines_until(process.stderr, b"scan_failed", times=2)
        await spare.up()
        await ensure_topics(settings)
        await lines_until(process.stdout, b"published repo-sweep acme/app")
        process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.wait(), 30)
        published = {key for key, _ in await received(setup.topic, 2, via=settings)}
    finally:
        if process.returncode is None:
            process.kill()
        await spare.down()

    assert process.returncode == 128 + signal.SIGTERM
    assert published == {b"acme/app", b"acme/gone"}


async def lines_until(stream: asyncio.StreamReader, text: bytes, *, times: int = 1) -> None:
    """Read ``stream`` until ``times`` lines held ``text``; fail at its end."""
    async with asyncio.timeout(60):
        while times:
            line = await stream.readline()
            assert line, f"the stream ended before {times} more line(s) with {text!r}"
            times -= text in line
