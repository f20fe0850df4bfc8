"""Acceptance tests run the real ``collector`` command as a subprocess."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import asyncpg
import pytest

from collector.config import Settings
from collector.db.migrations import migrate
from tests.conftest import ADMIN_URL
from tests.registry import snapshot


def collector_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "collector", *args]


def run_collector(
    *args: str, timeout: float = 300, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the CLI to completion, with ``env`` added to the environment; logs stay quiet
    unless something fails."""
    env = {**os.environ, "COLLECTOR_LOG_LEVEL": "warning", **(env or {})}
    return subprocess.run(
        collector_command(*args), capture_output=True, text=True, timeout=timeout, env=env
    )


def single_error_line(stderr: str) -> str:
    """The one `collector: error:` line a failed command prints."""
    lines = [line for line in stderr.splitlines() if line.startswith("collector: error:")]
    assert len(lines) == 1, stderr
    return lines[0]


def environment(settings: Settings, database_url: str, **extra: str) -> dict[str, str]:
    """The environment of a `collector run` process on ``settings``' broker, topics and
    group, and on ``database_url``; ``extra`` adds or overrides variables."""
    return {
        **os.environ,
        "COLLECTOR_LOG_LEVEL": "info",
        "COLLECTOR_DATABASE_URL": database_url,
        "COLLECTOR_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "COLLECTOR_TOPIC_REQUESTS": settings.topic_requests,
        "COLLECTOR_TOPIC_REMOVALS": settings.topic_removals,
        "COLLECTOR_TOPIC_DEAD_LETTER": settings.topic_dead_letter,
        "COLLECTOR_GROUP_ID": settings.group_id,
        "COLLECTOR_TOPIC_PARTITIONS": str(settings.topic_partitions),
        "COLLECTOR_WORK_POLL_INTERVAL_S": "0.2",
        **extra,
    }


def database_url(name: str) -> str:
    return ADMIN_URL.rsplit("/", 1)[0] + "/" + name


async def _admin(*statements: str) -> None:
    conn = await asyncpg.connect(ADMIN_URL)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


CreateDatabase = Callable[..., Coroutine[Any, Any, str]]


@pytest.fixture
async def create_database() -> AsyncIterator[CreateDatabase]:
    """Makes throwaway databases (migrated, or copied from a template); drops them after."""
    made: list[str] = []

    async def create(name: str, *, template: str | None = None) -> str:
        await _admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        if template:
            await _admin(f"CREATE DATABASE {name} TEMPLATE {template}")
        else:
            await _admin(f"CREATE DATABASE {name}")
            conn = await asyncpg.connect(database_url(name))
            try:
                await migrate(conn)
            finally:
                await conn.close()
        made.append(name)
        return database_url(name)

    yield create
    await _admin(*(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)" for name in reversed(made)))


async def removals(url: str) -> Counter[str]:
    """The outbox as a multiset of (type, data): event ids differ between runs by design."""
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT event FROM gc.outbox ORDER BY id")
        return Counter(
            json.dumps([e["type"], e["data"]], sort_keys=True)
            for e in (json.loads(row["event"]) for row in rows)
        )
    finally:
        await conn.close()


async def state(url: str) -> dict[str, Any]:
    conn = await asyncpg.connect(url)
    try:
        return {
            "rows": await snapshot(conn),
            "candidates": await conn.fetchval("SELECT count(*) FROM gc.candidate"),
            "outbox": await conn.fetchval("SELECT count(*) FROM gc.outbox"),
        }
    finally:
        await conn.close()


async def kill_when(
    url: str, process: asyncio.subprocess.Process, ready: str, *args: object, jitter_s: float = 0.05
) -> bool:
    """SIGKILL ``process`` once the query ``ready`` (with ``args``) returns true, within
    ``jitter_s`` after; True if it was still running then."""
    conn = await asyncpg.connect(url)
    try:
        while process.returncode is None:
            if await conn.fetchval(ready, *args):
                await asyncio.sleep(random.uniform(0, jitter_s))  # land anywhere in a transaction
                running = process.returncode is None
                process.send_signal(signal.SIGKILL)
                await asyncio.wait_for(process.wait(), 30)
                return running
            await asyncio.sleep(0.005)
        return False
    finally:
        await conn.close()
