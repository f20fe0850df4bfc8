"""`collector sink blob-deleter` and `collector audit` as a user runs them."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer

from collector.config import Settings
from collector.kafka import client_options
from collector.sinks.storage import FilesystemStorage
from events import BlobRemoved, CloudEvent, RepoSweep, removal_event, request_event, to_record
from tests.acceptance.conftest import (
    CreateDatabase,
    collector_command,
    run_collector,
    single_error_line,
)
from tests.pipeline import pipeline_settings, topics

WAIT_S = 30.0


@dataclass
class Setup:
    settings: Settings
    url: str
    storage: FilesystemStorage
    env: dict[str, str]


@pytest.fixture
async def setup(
    create_database: CreateDatabase, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Setup]:
    """A migrated database, an empty storage directory, topics and a group of the test's
    own, all named to the collector through its environment variables."""
    url = await create_database("sinks_acceptance")
    suffix = uuid.uuid4().hex[:12]
    blob_group = f"test.blob-deleter.{suffix}"
    async with topics(
        pipeline_settings(url, topic_partitions=2, sink_group_id=blob_group)
    ) as settings:
        env = {
            "COLLECTOR_DATABASE_URL": url,
            "COLLECTOR_TOPIC_REQUESTS": settings.topic_requests,
            "COLLECTOR_TOPIC_REMOVALS": settings.topic_removals,
            "COLLECTOR_SINK_GROUP_ID": settings.sink_group_id,
        }
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        root = tmp_path / "storage"
        root.mkdir()
        yield Setup(settings, url, FilesystemStorage(root), env)


def digest(n: int) -> str:
    return f"sha256:{n:064x}"


def blob_removed(d: str, *, causation_id: str = "request-1") -> CloudEvent:
    removal = BlobRemoved(blob_id=1, digest=d, size=10, locations=["local"])
    return removal_event(removal, causation_id=causation_id)


def stored(setup: Setup, *digests: str) -> list[Path]:
    paths = []
    for d in digests:
        path = setup.storage.path(d)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"layer")
        paths.append(path)
    return paths


async def produce(topic: str, events: list[tuple[bytes, CloudEvent]]) -> None:
    producer = AIOKafkaProducer(acks="all", **client_options(Settings()))
    await asyncio.wait_for(producer.start(), WAIT_S)
    try:
        for key, event in events:
            value, headers = to_record(event)
            await asyncio.wait_for(
                producer.send_and_wait(topic, value, key=key, headers=headers), WAIT_S
            )
    finally:
        await producer.stop()


async def test_blob_deleter_deletes_removed_blobs_and_prints_a_summary(setup: Setup) -> None:
    """Removed digests' files go, a re-pushed digest's file stays, a second run finds
    nothing left to do (offsets were committed); exit 0 with a one-line summary."""
    gone, kept, other = stored(setup, digest(1), digest(2), digest(3))
    conn = await asyncpg.connect(setup.url)
    try:
        await conn.execute("INSERT INTO blob (digest, size) VALUES ($1, 10)", digest(2))
    finally:
        await conn.close()
    events = [blob_removed(digest(n)) for n in (1, 2, 4)]
    await produce(setup.settings.topic_removals, [(e.data["digest"].encode(), e) for e in events])
    command = ("sink", "blob-deleter", "--storage-root", str(setup.storage.root))

    # Digest 4 never had a file: one in two files found, let through.
    first = run_collector(*command, "--exit-when-idle", "2", "--max-missing", "0.5", timeout=60)

    assert first.returncode == 0, first.stderr
    assert (gone.exists(), kept.exists(), other.exists()) == (False, True, True)
    assert first.stderr.splitlines()[-1] == (
        "blob-deleter: 1 deleted, 1 already gone (1 never deleted by a deleter), 1 re-pushed"
        " skipped, 0 duplicate(s), 0 other event(s) skipped, 0 invalid record(s) skipped"
    )
    again = run_collector(*command, "--exit-when-idle", "1", "--json", timeout=60)
    assert again.returncode == 0, again.stderr
    summary = json.loads(again.stdout)["summary"]
    assert (summary["deleted"], summary["already_gone"], summary["repushed"]) == (0, 0, 0)


@pytest.mark.parametrize("layout", ["empty", "missing"])
async def test_blob_deleter_refuses_a_root_that_is_not_a_storage(
    setup: Setup, tmp_path: Path, layout: str
) -> None:
    """An empty folder or no folder at all: exit 2 with one line, nothing consumed."""
    root = tmp_path / "not-a-storage"
    if layout == "empty":
        root.mkdir()
    [path] = stored(setup, digest(7))
    await produce(setup.settings.topic_removals, [(b"k", blob_removed(digest(7)))])

    refused = run_collector("sink", "blob-deleter", "--storage-root", str(root), timeout=60)

    assert refused.returncode == 2
    line = single_error_line(refused.stderr)
    assert str(root) in line
    if layout == "empty":
        assert "has no sha256/ directory: is the storage mounted there?" in line
    right = run_collector(
        "sink", "blob-deleter", "--storage-root", str(setup.storage.root),
        "--exit-when-idle", "1", timeout=60,
    )  # fmt: skip
    assert right.returncode == 0, right.stderr
    assert not path.exists()  # nothing was consumed by the refused runs


async def test_blob_deleter_on_a_wrong_storage_stops_with_nothing_committed(
    setup: Setup, tmp_path: Path
) -> None:
    """A root with the layout but none of the files: exit 1 naming the root and the
    flag, offsets not committed, so the right root later deletes them all."""
    wrong = FilesystemStorage(tmp_path / "wrong")
    (wrong.root / "sha256").mkdir(parents=True)
    paths = stored(setup, *map(digest, range(10, 14)))
    events = [blob_removed(digest(n)) for n in range(10, 14)]
    await produce(setup.settings.topic_removals, [(b"k", event) for event in events])

    stopped = run_collector(
        "sink", "blob-deleter", "--storage-root", str(wrong.root), "--exit-when-idle", "2",
        timeout=60,
    )  # fmt: skip

    assert stopped.returncode == 1
    line = single_error_line(stopped.stderr)
    assert f"4 of the 4 blob files of a batch are not in {wrong.root}" in line
    assert "--max-missing" in line
    assert all(path.exists() for path in paths)
    right = run_collector(
        "sink", "blob-deleter", "--storage-root", str(setup.storage.root),
        "--exit-when-idle", "1", timeout=60,
    )  # fmt: skip
    assert right.returncode == 0, right.stderr
    assert not any(path.exists() for path in paths)


async def test_blob_deleter_stops_cleanly_on_sigterm(setup: Setup) -> None:
    """A deleter running as a service deletes as events come and, on SIGTERM, ends the
    batch in hand, prints its summary and exits 143."""
    [path] = stored(setup, digest(5))
    process = await asyncio.create_subprocess_exec(
        *collector_command("sink", "blob-deleter", "--storage-root", str(setup.storage.root)),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "COLLECTOR_LOG_LEVEL": "warning"},
    )
    try:
        await produce(setup.settings.topic_removals, [(b"k", blob_removed(digest(5)))])
        async with asyncio.timeout(WAIT_S):
            while path.exists():  # noqa: ASYNC110  # a file has no event to wait on
                await asyncio.sleep(0.1)
        process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(process.communicate(), WAIT_S)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()

    assert process.returncode == 128 + signal.SIGTERM, stderr
    *_, summary, stopped = stderr.decode().splitlines()
    assert summary.startswith("blob-deleter: 1 deleted, ")
    assert stopped == "collector: blob-deleter stopped by SIGTERM"


async def test_audit_json_links_removals_to_requests_identically_each_time(setup: Setup) -> None:
    """`audit --json` prints one object per removal with its cause, then the summary; a
    removal from the command line (cli-… causation id) names `collector collect`; two
    runs print the same bytes."""
    sweep = request_event(
        RepoSweep(namespace="acme", repository="web", repository_id=1), source="/test"
    )
    await produce(setup.settings.topic_requests, [(b"acme/web", sweep)])
    caused, cli = (
        blob_removed(digest(6), causation_id=sweep.id),
        blob_removed(digest(7), causation_id="cli-1"),
    )
    await produce(setup.settings.topic_removals, [(b"a", caused), (b"b", cli), (b"a", caused)])

    first = run_collector("audit", "--json", timeout=60)
    second = run_collector("audit", "--json", timeout=60)

    assert first.returncode == 0, first.stderr
    assert first.stdout == second.stdout
    *removals, summary = [json.loads(line) for line in first.stdout.splitlines()]
    causes = {entry["id"]: entry["cause"] for entry in removals}
    assert causes[caused.id] == {
        "type": "registry.gc.repo-sweep",
        "id": sweep.id,
        "repository": "acme/web",
        "time": sweep.time.isoformat().replace("+00:00", "Z"),
    }
    assert causes[cli.id] == {
        "type": "collector collect",
        "id": "cli-1",
        "repository": None,
        "time": None,
    }
    assert summary["summary"]["duplicates"] == {"count": 1, "ids": [caused.id]}
    assert summary["summary"]["unknown_cause"] == {
        "count": 0,
        "causation_ids": {},
        "without_causationid": 0,
    }


async def test_audit_text_filters_by_digest(setup: Setup) -> None:
    """`audit --digest D` prints the removal lines of that digest only, then the summary."""
    events = [blob_removed(digest(n)) for n in (8, 9)]
    await produce(setup.settings.topic_removals, [(b"k", event) for event in events])

    result = run_collector("audit", "--digest", digest(9), timeout=60)

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].endswith(f" blob-removed {digest(9)} cause: unknown")
    assert lines[1] == "removals: 1 (blob-removed 1)"


@pytest.mark.parametrize("since", ["last tuesday", "2025-02-30", "2025-01-31T10:00:00"])
def test_audit_with_a_bad_since_exits_2_with_one_line(since: str) -> None:
    """A --since that is not an RFC 3339 time or date is a usage error, said in one line."""
    result = run_collector("audit", "--since", since, timeout=60)

    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"collector: error: invalid --since {since!r}: expected an RFC 3339 time"
        " (2025-01-31T12:00:00Z) or a date (2025-01-31)"
    ]
