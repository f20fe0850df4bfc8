"""`collector run` as a real process: SIGKILL mid-run, SIGTERM, two processes in one group."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from collector.clock import SystemClock
from collector.config import Settings
from collector.demo.seed import Shape, delete_repositories, expire_tags, plan_registry, write
from tests.acceptance.conftest import (
    CreateDatabase,
    collector_command,
    environment,
    kill_when,
    removals,
    state,
)
from tests.pipeline import pipeline_settings, read_topic, topics

#: With --batch-size 25 (the engine's), small batches in the intake and the relay too:
#: more commits for a kill to fall between.
SMALL_BATCHES = {"COLLECTOR_INTAKE_POLL_RECORDS": "25", "COLLECTOR_RELAY_BATCH_SIZE": "25"}


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        collector_command(*args), capture_output=True, text=True, timeout=240, env=env
    )


async def seed(url: str, *, repositories: int, seed: int) -> None:
    conn = await asyncpg.connect(url)
    try:
        now_ms = SystemClock().now_ms()
        plan = plan_registry(
            Shape(repositories=repositories, manifests_per_repository=8), now_ms=now_ms, seed=seed
        )
        await write(conn, plan)
        await expire_tags(conn, plan.run, fraction=0.4, now_ms=now_ms, seed=seed)
        await delete_repositories(conn, plan.run, fraction=0.15, seed=seed)
    finally:
        await conn.close()


async def requests_table(url: str) -> list[dict[str, Any]]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT event_id, outcome, finished_by FROM gc.request ORDER BY event_id"
        )
        return [dict(row) for row in rows]
    finally:
        await conn.close()


async def outbox_ids(url: str) -> set[str]:
    conn = await asyncpg.connect(url)
    try:
        return {str(row["event_id"]) for row in await conn.fetch("SELECT event_id FROM gc.outbox")}
    finally:
        await conn.close()


@pytest.fixture
async def pipeline(create_database: CreateDatabase) -> AsyncIterator[tuple[Settings, str]]:
    url = await create_database("run_source")
    async with topics(pipeline_settings(url)) as settings:
        yield settings, url


async def test_sigkill_during_run_then_restart_publishes_every_deletion_and_equals_a_clean_run(
    create_database: CreateDatabase, pipeline: tuple[Settings, str]
) -> None:
    """Kill `collector run` three times while it works through a scan's requests, restart
    it: the registry ends as after an uninterrupted run, every request is finished, and
    every committed deletion has exactly one distinct event id on the removals topic."""
    settings, source = pipeline
    await seed(source, repositories=60, seed=11)
    straight = await create_database("run_straight", template="run_source")
    crashed = await create_database("run_killed", template="run_source")
    scanned = run(environment(settings, source), "scan")
    assert scanned.returncode == 0, scanned.stderr
    assert scanned.stdout.count("published ") > 20

    # The uninterrupted run: the same requests, its own group and removals topic.
    async with topics(pipeline_settings(straight)) as clean:
        env = environment(
            clean, straight, COLLECTOR_TOPIC_REQUESTS=settings.topic_requests, **SMALL_BATCHES
        )
        done = run(env, "run", "--exit-when-idle", "1", "--batch-size", "25")
        assert done.returncode == 0, done.stderr
    expected = await removals(straight)
    total = sum(expected.values())
    assert total > 2000

    rng = random.Random(os.environ.get("CRASH_SEED", "run-sigkill"))
    env = environment(settings, crashed, COLLECTOR_LOG_LEVEL="warning", **SMALL_BATCHES)
    kills = 0
    for share in sorted(rng.uniform(0.05, 0.9) for _ in range(3)):
        process = await asyncio.create_subprocess_exec(
            *collector_command("run", "--batch-size", "25"),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            env=env,
        )
        kills += await kill_when(
            crashed, process, "SELECT count(*) >= $1 FROM gc.outbox", int(total * share)
        )
    assert kills >= 2, "the service must have been killed mid-run"
    finish = run(env, "run", "--exit-when-idle", "1", "--batch-size", "25")
    assert finish.returncode == 0, finish.stderr

    assert await state(crashed) == await state(straight)
    assert await removals(crashed) == expected
    # A purge killed after removing the repository, before its request was marked
    # finished, finds the repository gone when it is redone.
    redone = {"gone": "purged"}
    outcomes = [
        (r["event_id"], redone.get(r["outcome"], r["outcome"]))
        for r in await requests_table(crashed)
    ]
    assert outcomes == [(r["event_id"], r["outcome"]) for r in await requests_table(straight)]
    assert all(outcome is not None for _, outcome in outcomes)
    published = [r.event["id"] for r in await read_topic(settings.topic_removals)]
    assert set(published) == await outbox_ids(crashed)
    assert len(set(published)) == total


async def _lines(
    stream: asyncio.StreamReader, sink: list[dict[str, Any]], news: asyncio.Event
) -> None:
    while line := await stream.readline():
        with contextlib.suppress(ValueError):
            sink.append(json.loads(line))
            news.set()


async def test_two_processes_in_one_group_share_the_work_and_stop_cleanly_on_sigterm(
    pipeline: tuple[Settings, str],
) -> None:
    """Two services in one group split the partitions, each finishes part of the
    requests, none twice; SIGTERM stops both with exit 0 and their offsets committed."""
    settings, url = pipeline
    await seed(url, repositories=40, seed=5)
    env = environment(settings, url)
    logs: list[list[dict[str, Any]]] = [[], []]
    processes = []
    readers = []
    news = asyncio.Event()
    for log in logs:
        process = await asyncio.create_subprocess_exec(
            *collector_command("run", "--concurrency", "2"),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        assert process.stderr is not None
        processes.append(process)
        readers.append(asyncio.create_task(_lines(process.stderr, log, news)))

    def assigned(log: list[dict[str, Any]]) -> list[int]:
        events = [line for line in log if line.get("event") == "partitions_assigned"]
        return events[-1]["partitions"] if events else []

    def split() -> bool:
        """Each process holds partitions, and together exactly the three, once each."""
        first, second = assigned(logs[0]), assigned(logs[1])
        return bool(first and second) and sorted(first + second) == [0, 1, 2]

    async with asyncio.timeout(60):  # the group has rebalanced between the two
        while not split():
            news.clear()
            await news.wait()

    scanned = run(env, "scan")
    assert scanned.returncode == 0, scanned.stderr
    published = scanned.stdout.count("published ")
    async with asyncio.timeout(120):
        while True:
            rows = await requests_table(url)
            if len(rows) == published and all(r["outcome"] for r in rows):
                break
            await asyncio.sleep(0.2)

    for process in processes:
        process.send_signal(signal.SIGTERM)
    codes = await asyncio.wait_for(asyncio.gather(*(p.wait() for p in processes)), 60)
    await asyncio.gather(*readers)
    assert codes == [0, 0]
    assert len({row["finished_by"] for row in rows}) == 2, "both processes worked"
    received = [sum(1 for line in log if line.get("event") == "request_accepted") for log in logs]
    assert all(received), "both processes took requests from the topic"
    assert sum(received) == published
    # The offsets were committed on the way out: a new member finds nothing left to read.
    after = run(env, "run", "--exit-when-idle", "0.5")
    assert after.returncode == 0, after.stderr
    assert "run: 0 record(s) received" in after.stderr


async def test_run_refuses_an_unmigrated_database_and_bad_flags_with_one_line(
    create_database: CreateDatabase,
) -> None:
    """A database without the collector's migrations is a configuration error (exit 2,
    one line naming the fix), and so is a negative --exit-when-idle."""
    bare = await create_database("run_bare", template="template0")
    settings = pipeline_settings(bare)

    unmigrated = run(environment(settings, bare), "run", "--exit-when-idle", "1")
    negative = run(environment(settings, bare), "run", "--exit-when-idle", "-1")

    assert unmigrated.returncode == 2
    assert unmigrated.stderr.strip().splitlines()[-1] == (
        "collector: error: the database lacks migration 1 (registry): run `collector migrate` first"
    )
    assert negative.returncode == 2
    assert negative.stderr.count("collector: error:") == 1
    assert "--exit-when-idle" in negative.stderr


async def test_run_creates_missing_topics_and_gives_up_on_an_unreachable_broker(
    create_database: CreateDatabase,
) -> None:
    """The service creates the topics it needs; with no broker at all it retries for
    COLLECTOR_CONNECT_WAIT_S, then exits 1 with one line."""
    url = await create_database("run_topics")
    settings = pipeline_settings(url)
    env = environment(settings, url)
    try:
        created = run(env, "run", "--exit-when-idle", "0.5")
        assert created.returncode == 0, created.stderr
        assert await read_topic(settings.topic_requests) == []
        assert await read_topic(settings.topic_dead_letter, partitions=1) == []
    finally:
        async with topics(settings):
            pass  # deletes them

    unreachable = run(
        {**env, "COLLECTOR_KAFKA_BOOTSTRAP": "127.0.0.1:1", "COLLECTOR_CONNECT_WAIT_S": "1"},
        "run",
    )
    assert unreachable.returncode == 1
    last = unreachable.stderr.strip().splitlines()[-1]
    assert last.startswith("collector: error: cannot reach the Kafka broker")
