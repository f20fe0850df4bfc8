"""What the service-level scenarios share: a scratch database, topics of their own, and
`collector` run as the separate process it is in production, measured from outside."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from bench.collect import ADMIN_URL
from bench.compare import drop_database
from collector.config import Settings
from collector.db.migrations import migrate

#: `collector …` with this interpreter, whichever environment runs the benchmark.
COLLECTOR = [sys.executable, "-m", "collector"]


@asynccontextmanager
async def scratch_database(kind: str, template: str | None = None) -> AsyncIterator[str]:
    """A migrated database of a name no one else uses (a copy of the database at URL
    ``template`` if given), dropped afterwards; yields its URL."""
    name = f"d_bench_{kind}_{uuid.uuid4().hex[:8]}"
    copy = f" TEMPLATE {template.rsplit('/', 1)[1]}" if template else ""
    admin = await asyncpg.connect(ADMIN_URL)
    try:
        await admin.execute(f"CREATE DATABASE {name}{copy}")
    finally:
        await admin.close()
    url = ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    try:
        if not template:
            conn = await asyncpg.connect(url)
            try:
                await migrate(conn)
            finally:
                await conn.close()
        yield url
    finally:
        await drop_database(name)


def bench_settings(database_url: str, **overrides: Any) -> Settings:
    """Settings with topics and a consumer group no other run shares."""
    suffix = uuid.uuid4().hex[:8]
    values: dict[str, Any] = {
        "database_url": database_url,
        "topic_requests": f"bench.requests.{suffix}",
        "topic_removals": f"bench.removals.{suffix}",
        "topic_dead_letter": f"bench.dead-letter.{suffix}",
        "group_id": f"bench.{suffix}",
        **overrides,
    }
    return Settings(**values)


def environment(settings: Settings) -> dict[str, str]:
    """The environment that gives a `collector` process these settings."""
    return {
        **os.environ,
        "COLLECTOR_DATABASE_URL": settings.database_url,
        "COLLECTOR_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "COLLECTOR_TOPIC_REQUESTS": settings.topic_requests,
        "COLLECTOR_TOPIC_REMOVALS": settings.topic_removals,
        "COLLECTOR_TOPIC_DEAD_LETTER": settings.topic_dead_letter,
        "COLLECTOR_GROUP_ID": settings.group_id,
        "COLLECTOR_TOPIC_PARTITIONS": str(settings.topic_partitions),
        "COLLECTOR_REPOSITORY_CONCURRENCY": str(settings.repository_concurrency),
        "COLLECTOR_LOG_LEVEL": "warning",
    }


@dataclass(frozen=True)
class Measured:
    """A finished `collector` process: its wall time and peak RSS."""

    seconds: float
    peak_rss_mib: float


def run_measured(arguments: list[str], settings: Settings) -> Measured:
    """Run `collector ARGUMENTS` to its end, sampling its VmHWM (the kernel's peak RSS of
    the process since its exec) every 50 ms. Not getrusage: a child's ru_maxrss
    counts the memory of this process it was forked from."""
    started = time.perf_counter()
    peak_kib = 0
    with tempfile.TemporaryFile() as errors:
        process = subprocess.Popen(
            [*COLLECTOR, *arguments],
            env=environment(settings),
            stdout=subprocess.DEVNULL,
            stderr=errors,
        )
        status = Path(f"/proc/{process.pid}/status")
        while process.poll() is None:
            with contextlib.suppress(OSError, StopIteration):  # gone, or its memory already
                line = next(x for x in status.read_text().splitlines() if x.startswith("VmHWM"))
                peak_kib = max(peak_kib, int(line.split()[1]))
            time.sleep(0.05)
        seconds = time.perf_counter() - started
        if process.returncode != 0:
            errors.seek(0)
            command = " ".join(arguments)
            tail = errors.read().decode(errors="replace")[-2000:]
            raise SystemExit(f"collector {command} exited {process.returncode}: {tail}")
    return Measured(seconds, peak_kib / 1024)
