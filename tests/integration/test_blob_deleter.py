"""The blob deleter against the real PostgreSQL and Kafka: bytes follow rows, once, safely."""

from __future__ import annotations

import asyncio
import contextlib
import json
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from prometheus_client import REGISTRY
from structlog.typing import EventDict

from collector.config import Settings
from collector.errors import DatabaseUnavailable
from collector.sinks.blob_deleter import BlobDeleter, Counts, RecentIds, TooManyMissing
from collector.sinks.storage import FilesystemStorage, ObjectStorageError
from events import BlobRemoved, CloudEvent, TagRemoved, removal_event, to_record
from tests.integration.test_kafka import WAIT_S, bootstrap
from tests.pipeline import free_port, pipeline_settings, topics, until
from tests.registry import Registry

#: Short enough to keep each test at a few seconds, long enough for a fetch round trip.
IDLE_S = 1.0


@pytest.fixture
async def settings(database_url: str) -> AsyncIterator[Settings]:
    """Settings on the test database, a group and topics of the test's own (2 partitions)."""
    suffix = uuid.uuid4().hex[:12]
    overrides = {"topic_partitions": 2, "sink_group_id": f"test.blob-deleter.{suffix}"}
    async with topics(pipeline_settings(database_url, **overrides)) as settings:
        yield settings


@pytest.fixture
def storage(tmp_path: Path) -> FilesystemStorage:
    root = tmp_path / "storage"
    root.mkdir()
    return FilesystemStorage(root)


def digest(n: int) -> str:
    return f"sha256:{n:064x}"


def stored(storage: FilesystemStorage, *digests: str) -> list[Path]:
    """Write a file for each digest where the deleter looks for it."""
    paths = []
    for d in digests:
        path = storage.path(d)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(d.encode())
        paths.append(path)
    return paths


def blob_removed(d: str, *, event_id: str | None = None) -> CloudEvent:
    removal = BlobRemoved(blob_id=1, digest=d, size=10, locations=["local"])
    return removal_event(removal, causation_id="request-1", event_id=event_id)


def tag_removed() -> CloudEvent:
    removal = TagRemoved(
        namespace="acme",
        repository="web",
        repository_id=1,
        tag="v1",
        tag_id=1,
        manifest_digest=digest(999),
    )
    return removal_event(removal, causation_id="request-1")


async def produce(
    settings: Settings, records: Iterable[CloudEvent | bytes], *, partition: int | None = None
) -> None:
    """Events keyed as the relay keys them, raw bytes as they come; all acknowledged."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap(), acks="all")
    await asyncio.wait_for(producer.start(), WAIT_S)
    try:
        for record in records:
            headers: list[tuple[str, bytes]] = []
            if isinstance(record, bytes):
                value, key = record, b"junk"
            else:
                value, headers = to_record(record)
                key = (record.subject or "").encode()
            await asyncio.wait_for(
                producer.send_and_wait(
                    settings.topic_removals, value, key=key, headers=headers, partition=partition
                ),
                WAIT_S,
            )
    finally:
        await producer.stop()


async def drain(settings: Settings, storage: Any, **overrides: Any) -> BlobDeleter:
    """Run a deleter (on ``settings`` with ``overrides``) until idle for IDLE_S."""
    deleter = BlobDeleter(settings.model_copy(update=overrides), storage, exit_when_idle=IDLE_S)
    await asyncio.wait_for(deleter.run(), WAIT_S)
    return deleter


async def committed(settings: Settings) -> dict[int, int | None]:
    """The group's committed offset per partition of the removals topic."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap(), group_id=settings.sink_group_id)
    await asyncio.wait_for(consumer.start(), WAIT_S)
    try:
        return {
            p: await consumer.committed(TopicPartition(settings.topic_removals, p))
            for p in range(settings.topic_partitions)
        }
    finally:
        await consumer.stop()


def logged(entries: list[EventDict], event: str) -> list[EventDict]:
    return [entry for entry in entries if entry["event"] == event]


async def test_removed_blobs_are_deleted_and_other_bytes_left_alone(
    settings: Settings, storage: FilesystemStorage, db: asyncpg.Pool[asyncpg.Record]
) -> None:
    """Each removed digest's file goes; a file already gone is fine (one in four of a
    partition's batch, within max_missing); files of other blobs and events of other
    types are left alone."""
    removed = stored(storage, digest(1), digest(2), digest(3))
    kept = stored(storage, digest(10), digest(11))
    await produce(
        settings, [*map(blob_removed, map(digest, (1, 2, 3, 4))), tag_removed()], partition=0
    )

    deleter = await drain(settings, storage, max_missing=0.25)

    assert not any(path.exists() for path in removed)
    assert all(path.exists() for path in kept)
    counts = deleter.counts
    assert (counts.deleted, counts.already_gone, counts.other) == (3, 1, 1)
    assert (counts.repushed, counts.duplicates, counts.invalid) == (0, 0, 0)
    assert counts.missing == 1  # digest 4 never had a file: no deleter deleted it
    assert "3 deleted, 1 already gone (1 never deleted by a deleter)" in counts.summary()


async def test_files_gone_that_no_deleter_deleted_stop_it_with_nothing_committed(
    settings: Settings, storage: FilesystemStorage, tmp_path: Path
) -> None:
    """A root with the layout but not the files (another volume): more files missing
    than max_missing allows stops the deleter, offsets uncommitted, so the deleter
    pointed at the right storage later deletes every one of them. (One partition: the
    batch judged is one partition's.)"""
    right = FilesystemStorage(tmp_path / "right")
    files = stored(right, *map(digest, range(20, 30)))
    stored(storage, digest(99))  # the wrong root has a sha256/ directory, and one file
    await produce(settings, [*map(blob_removed, map(digest, range(20, 30)))], partition=0)

    with pytest.raises(TooManyMissing, match=r"10 of the 10 blob files of a batch"):
        await drain(settings, storage)
    assert set((await committed(settings)).values()) == {None}

    deleter = await drain(settings, right)
    assert deleter.counts.deleted == 10
    assert not any(path.exists() for path in files)


async def test_bytes_deleted_by_a_transaction_that_failed_are_not_missing_on_retry(
    settings: Settings, storage: FilesystemStorage
) -> None:
    """The bytes go, then the transaction fails (here: the storage reports an error
    after deleting). The retry finds them gone: deleted before, not missing, because
    the deletion was recorded before the bytes went."""

    class DeletesThenFails:
        def __init__(self) -> None:
            self.calls = 0

        async def delete(self, digest: str) -> bool:
            self.calls += 1
            deleted = await storage.delete(digest)
            if self.calls == 1:
                raise ObjectStorageError("the connection went after the delete")
            return deleted

    [path] = stored(storage, digest(50))
    flaky = DeletesThenFails()
    await produce(settings, [blob_removed(digest(50))])

    deleter = await drain(settings, flaky)

    assert flaky.calls == 2
    assert not path.exists()
    assert (deleter.counts.already_gone, deleter.counts.missing) == (1, 0)


async def test_files_a_deleter_deleted_are_not_missing_when_redelivered(
    settings: Settings, storage: FilesystemStorage
) -> None:
    """Events delivered again after the deletes (a crash before the commit, another
    group) find the files gone as deleted, not missing: no stop."""
    stored(storage, *map(digest, range(40, 45)))
    await produce(settings, [*map(blob_removed, map(digest, range(40, 45)))])
    first = await drain(settings, storage)
    assert first.counts.deleted == 5

    again = settings.model_copy(update={"sink_group_id": settings.sink_group_id + ".again"})
    second = await drain(again, storage)

    assert (second.counts.already_gone, second.counts.missing) == (5, 0)


async def test_a_digest_pushed_again_keeps_its_bytes(
    settings: Settings, storage: FilesystemStorage, registry: Registry
) -> None:
    """A blob row with the removed digest exists again: the delete is skipped and logged,
    naming the request whose removal it was."""
    await registry.blob(digest=digest(5))
    [repushed, gone] = stored(storage, digest(5), digest(6))
    await produce(settings, [blob_removed(digest(5)), blob_removed(digest(6))])

    with structlog.testing.capture_logs(
        processors=[structlog.contextvars.merge_contextvars]
    ) as logs:
        deleter = await drain(settings, storage)

    assert repushed.exists()
    assert not gone.exists()
    assert (deleter.counts.repushed, deleter.counts.deleted) == (1, 1)
    [line] = logged(logs, "blob_repushed")
    assert line["digest"] == digest(5)
    assert line["causation_id"] == "request-1"  # the request behind it, followed to the bytes


async def test_the_digest_lock_is_held_across_check_and_delete(
    settings: Settings, storage: FilesystemStorage, registry: Registry
) -> None:
    """While a registry holds the digest's advisory lock (finalizing an upload), the deleter
    waits; when the registry commits its blob row, the deleter sees it and keeps the bytes."""
    [path] = stored(storage, digest(7))
    await produce(settings, [blob_removed(digest(7))])
    conn = registry.conn
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", digest(7))
        task = asyncio.create_task(drain(settings, storage))
        await asyncio.wait_for(lock_waited_for(conn), WAIT_S)
        assert path.exists()
        await registry.blob(digest=digest(7))
    deleter = await asyncio.wait_for(task, WAIT_S)

    assert path.exists()
    assert deleter.counts.repushed == 1


class StalledStorage(FilesystemStorage):
    """A storage whose delete takes until ``finish`` is set, as a slow NFS server's may."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.started = asyncio.Event()
        self.finish = asyncio.Event()

    async def delete(self, digest: str) -> bool:
        self.started.set()
        await self.finish.wait()
        return await super().delete(digest)


async def test_a_cancelled_deleter_holds_the_digest_lock_until_its_delete_is_done(
    settings: Settings, storage: FilesystemStorage, registry: Registry
) -> None:
    """A hand-over or a stop that gives up on a batch cancels it mid-delete: the
    digest's lock stays held until the bytes are gone, so a registry re-pushing the
    digest cannot write its file in between and lose it to our unlink."""
    [path] = stored(storage, digest(8))
    stalled = StalledStorage(storage.root)
    await produce(settings, [blob_removed(digest(8))])
    running = asyncio.create_task(drain(settings, stalled))
    await asyncio.wait_for(stalled.started.wait(), WAIT_S)
    [batch] = [t for t in asyncio.all_tasks() if t.get_name().startswith("blob-deleter-")]
    batch.cancel()  # as a hand-over does after HANDOVER_S
    await asyncio.sleep(0.2)

    conn = registry.conn
    try_lock = "SELECT pg_try_advisory_lock(hashtextextended($1, 0))"
    assert not await conn.fetchval(try_lock, digest(8)), "the lock went with the delete pending"
    assert path.exists()
    stalled.finish.set()
    await asyncio.wait_for(running, WAIT_S)
    assert batch.cancelled()
    assert not path.exists()
    assert await conn.fetchval(try_lock, digest(8)), "the lock outlived the transaction"
    await conn.execute("SELECT pg_advisory_unlock(hashtextextended($1, 0))", digest(8))


async def lock_waited_for(conn: Any) -> None:
    """Until a session of this database waits for an advisory lock (pg_locks is live, not
    a snapshot, so polling it inside a transaction sees the waiter arrive)."""
    while True:
        if await conn.fetchval(
            """
            SELECT EXISTS (
                SELECT 1 FROM pg_locks
                WHERE locktype = 'advisory' AND NOT granted
                  AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
            )
            """
        ):
            return
        await asyncio.sleep(0.05)


async def test_duplicates_are_handled_once_and_counted(
    settings: Settings, storage: FilesystemStorage, db: asyncpg.Pool[asyncpg.Record]
) -> None:
    """The same event twice (a re-publication) is handled once: the second copy counts as a
    duplicate, not as bytes already gone."""
    event = blob_removed(digest(8))
    [path] = stored(storage, digest(8))
    await produce(settings, [event, event])

    deleter = await drain(settings, storage)

    assert not path.exists()
    assert (deleter.counts.deleted, deleter.counts.duplicates) == (1, 1)
    assert deleter.counts.already_gone == 0


async def test_offsets_are_committed_after_the_deletes_and_a_restart_resumes(
    settings: Settings, storage: FilesystemStorage, db: asyncpg.Pool[asyncpg.Record]
) -> None:
    """A second deleter of the same group finds nothing left to do; after new events it
    handles only those; the committed offsets are the ends of the partitions."""
    stored(storage, digest(20), digest(21), digest(22))
    await produce(settings, [blob_removed(digest(20)), blob_removed(digest(21))])
    first = await drain(settings, storage)
    assert first.counts.deleted == 2

    again = await drain(settings, storage)
    assert again.counts == Counts()

    await produce(settings, [blob_removed(digest(22))])
    third = await drain(settings, storage)
    assert (third.counts.deleted, third.counts.already_gone) == (1, 0)
    assert sum(offset or 0 for offset in (await committed(settings)).values()) == 3


class SlowStorage(FilesystemStorage):
    """Takes ``delay`` seconds per delete, like a distant object store."""

    def __init__(self, root: Path, delay: float) -> None:
        super().__init__(root)
        self.delay = delay

    async def delete(self, digest: str) -> bool:
        await asyncio.sleep(self.delay)
        return await super().delete(digest)


async def test_two_deleters_in_one_group_share_the_work_without_redoing_any(
    settings: Settings, storage: FilesystemStorage, db: asyncpg.Pool[asyncpg.Record]
) -> None:
    """A second deleter joining mid-work makes the group rebalance; the first finishes and
    commits its batch in hand before letting its partitions go, so every blob is deleted
    exactly once and none is found already gone."""
    small_batches = settings.model_copy(update={"sink_poll_records": 2})
    digests = [digest(n) for n in range(100, 160)]
    paths = stored(storage, *digests)
    await produce(settings, map(blob_removed, digests))
    slow = SlowStorage(storage.root, delay=0.1)  # 6 s of work alone; a rebalance takes ~3 s
    with structlog.testing.capture_logs() as logs:
        first = asyncio.create_task(drain(small_batches, slow))
        await until(lambda: any(not path.exists() for path in paths))
        deleters = await asyncio.gather(first, drain(small_batches, slow))

    # The first deleter's partitions, then each deleter's after the rebalance.
    assert len(logged(logs, "partitions_assigned")) >= 3
    assert not any(path.exists() for path in paths)
    assert sum(d.counts.deleted for d in deleters) == len(digests)
    assert sum(d.counts.already_gone for d in deleters) == 0


class FailingStorage(FilesystemStorage):
    """Fails the first ``failures`` deletes (all of them with None), then deletes."""

    def __init__(self, root: Path, failures: int | None) -> None:
        super().__init__(root)
        self.failures = failures
        self.attempts = 0

    async def delete(self, digest: str) -> bool:
        self.attempts += 1
        if self.failures is None or self.attempts <= self.failures:
            raise ObjectStorageError("storage away (simulated)")
        return await super().delete(digest)


async def test_nothing_is_committed_before_the_delete_is_done(
    settings: Settings, storage: FilesystemStorage, db: asyncpg.Pool[asyncpg.Record]
) -> None:
    """A deleter stopped while its storage fails commits nothing for that record; the next
    deleter of the group deletes it."""
    [path] = stored(storage, digest(30))
    await produce(settings, [blob_removed(digest(30))], partition=0)
    failing = FailingStorage(storage.root, failures=None)
    deleter = BlobDeleter(settings, failing)
    task = asyncio.create_task(deleter.run())
    await until(lambda: failing.attempts >= 2)
    deleter.stop()
    await asyncio.wait_for(task, WAIT_S)

    assert path.exists()
    assert deleter.counts.deleted == 0
    assert (await committed(settings))[0] is None

    assert (await drain(settings, storage)).counts.deleted == 1
    assert not path.exists()


async def test_a_storage_outage_is_waited_out_and_logged_once(
    settings: Settings, storage: FilesystemStorage, db: asyncpg.Pool[asyncpg.Record]
) -> None:
    """Three failed deletes are retried with backoff; the outage and the recovery are each
    logged once; the bytes go."""
    [path] = stored(storage, digest(31))
    await produce(settings, [blob_removed(digest(31))])
    failing = FailingStorage(storage.root, failures=3)

    with structlog.testing.capture_logs() as logs:
        deleter = await drain(settings, failing)

    assert not path.exists()
    assert (failing.attempts, deleter.counts.deleted) == (4, 1)
    assert len(logged(logs, "storage_unavailable")) == 1
    assert len(logged(logs, "storage_recovered")) == 1


async def test_a_storage_root_that_is_not_the_storage_loses_no_deletion(
    settings: Settings, tmp_path: Path, db: asyncpg.Pool[asyncpg.Record]
) -> None:
    """Pointed at an empty folder (a volume not mounted yet), the deleter used to count
    every blob "already gone" and commit: each deletion lost. Now it waits, logging the
    storage unavailable, commits nothing, and deletes the bytes once the storage is there."""
    mount = tmp_path / "mount"
    mount.mkdir()
    real = FilesystemStorage(tmp_path / "volume")
    paths = stored(real, digest(40), digest(41))
    await produce(settings, [blob_removed(digest(40)), blob_removed(digest(41))], partition=0)

    with structlog.testing.capture_logs() as logs:
        deleter = BlobDeleter(settings, mount)
        task = asyncio.create_task(deleter.run())
        await until(lambda: bool(logged(logs, "storage_unavailable")))
        await asyncio.sleep(1.0)  # a few retries' worth: none may count the blob as gone
        deleter.stop()
        await asyncio.wait_for(task, WAIT_S)

    assert (deleter.counts.deleted, deleter.counts.already_gone) == (0, 0)
    assert (await committed(settings))[0] is None
    [unavailable] = logged(logs, "storage_unavailable")
    assert f"{mount} has no sha256/ directory" in unavailable["error"]
    mount.rmdir()
    (tmp_path / "volume").rename(mount)  # the volume, mounted at last

    after = await drain(settings, FilesystemStorage(mount))

    assert (after.counts.deleted, after.counts.already_gone) == (2, 0)
    assert not any((mount / path.relative_to(real.root)).exists() for path in paths)


async def test_bad_records_are_skipped_without_stalling_the_partition(
    settings: Settings, storage: FilesystemStorage, db: asyncpg.Pool[asyncpg.Record]
) -> None:
    """Bytes that are not JSON, JSON that is not a CloudEvent, a blob-removed without a
    digest and an empty value are logged with topic, partition and offset and skipped; the
    good record after them on the same partition is handled, and everything is committed."""
    not_a_removal = blob_removed(digest(40)).model_dump(mode="json")
    del not_a_removal["data"]["digest"]
    [path] = stored(storage, digest(41))
    records: list[CloudEvent | bytes] = [
        b"\xff\xfe not json",
        json.dumps({"hello": "world"}).encode(),
        json.dumps(not_a_removal).encode(),
        b"",
        blob_removed(digest(41)),
    ]
    await produce(settings, records, partition=1)

    with structlog.testing.capture_logs(
        processors=[structlog.contextvars.merge_contextvars]
    ) as logs:
        deleter = await drain(settings, storage)

    assert not path.exists()
    assert (deleter.counts.invalid, deleter.counts.deleted) == (4, 1)
    skipped = logged(logs, "record_skipped")
    assert [(e["topic"], e["partition"], e["offset"]) for e in skipped] == [
        (settings.topic_removals, 1, offset) for offset in range(4)
    ]
    assert all(e["log_level"] == "warning" for e in skipped)
    assert (await committed(settings))[1] == 5


async def test_a_traversal_digest_never_deletes_outside_the_storage(
    settings: Settings, storage: FilesystemStorage, db: asyncpg.Pool[asyncpg.Record]
) -> None:
    """Digests crafted to climb out of the storage root are refused and logged; the files
    they aim at survive, and the next good record is handled."""
    victim = storage.root.parent / "victim"
    victim.write_bytes(b"keep me")
    inside = storage.root / "sha256" / "victim"
    inside.parent.mkdir()
    inside.write_bytes(b"keep me too")
    crafted = ["sha256:../../victim", "sha256:../victim", "../../victim", str(victim)]
    [path] = stored(storage, digest(50))
    await produce(settings, [*map(blob_removed, crafted), blob_removed(digest(50))], partition=0)

    with structlog.testing.capture_logs(
        processors=[structlog.contextvars.merge_contextvars]
    ) as logs:
        deleter = await drain(settings, storage)

    assert victim.read_bytes() == b"keep me"
    assert inside.read_bytes() == b"keep me too"
    assert not path.exists()
    assert (deleter.counts.invalid, deleter.counts.deleted) == (4, 1)
    assert [e["reason"] for e in logged(logs, "digest_refused")] == [
        f"not an <algorithm>:<hex> digest: {d!r}" for d in crafted
    ]


async def test_an_unreachable_database_at_start_is_a_bounded_wait(
    settings: Settings, storage: FilesystemStorage
) -> None:
    """With no database to reach, the deleter retries for connect_wait_s, then gives up."""
    unreachable = settings.model_copy(
        update={"database_url": "postgresql://postgres@127.0.0.1:1/registry", "connect_wait_s": 0.3}
    )
    with pytest.raises(DatabaseUnavailable):
        await asyncio.wait_for(BlobDeleter(unreachable, storage).run(), WAIT_S)


def test_recent_ids_forget_the_least_recently_seen_beyond_capacity() -> None:
    """The dedupe memory is bounded: past its capacity the oldest id goes first, and
    seeing an id again makes it recent."""
    recent = RecentIds(capacity=2)
    recent.add("a")
    recent.add("b")
    recent.add("a")
    recent.add("c")

    assert ("a" in recent, "b" in recent, "c" in recent) == (True, False, True)


async def test_metrics_and_probes_say_what_the_deleter_did_and_whether_it_is_ready(
    settings: Settings, storage: FilesystemStorage
) -> None:
    """With a metrics port: blobs by outcome, bytes freed and skipped records on
    /metrics; /readyz ready once in its group, every check named; /healthz alive."""
    port = free_port()
    stored(storage, digest(60))
    before = {
        "deleted": sample("registry_gc_blob_deleter_blobs_total", outcome="deleted"),
        "bytes": sample("registry_gc_blob_deleter_freed_bytes_total"),
        "other": sample("registry_gc_blob_deleter_records_skipped_total", reason="other_event"),
    }
    await produce(settings, [blob_removed(digest(60)), tag_removed()])
    deleter = BlobDeleter(settings.model_copy(update={"metrics_port": port}), storage)
    running = asyncio.create_task(deleter.run())
    base = f"http://127.0.0.1:{port}"
    readiness: dict[str, Any] = {}
    try:
        async with asyncio.timeout(WAIT_S):
            while deleter.counts.deleted + deleter.counts.other < 2 or not readiness.get("ready"):
                await asyncio.sleep(0.1)
                with contextlib.suppress(OSError):
                    readiness = json.loads(await asyncio.to_thread(fetch, f"{base}/readyz"))
        alive = json.loads(await asyncio.to_thread(fetch, f"{base}/healthz"))
        page = await asyncio.to_thread(fetch, f"{base}/metrics")
    finally:
        deleter.stop()
        await asyncio.wait_for(running, WAIT_S)

    assert readiness == {
        "ready": True,
        "checks": {
            "database": True,
            "broker": True,
            "storage": True,
            "consumer": True,
            "running": True,
        },
    }
    assert alive == {"alive": True}
    assert 'registry_gc_blob_deleter_blobs_total{outcome="deleted"}' in page
    assert (
        sample("registry_gc_blob_deleter_blobs_total", outcome="deleted") == before["deleted"] + 1
    )
    assert sample("registry_gc_blob_deleter_freed_bytes_total") == before["bytes"] + 10
    assert (
        sample("registry_gc_blob_deleter_records_skipped_total", reason="other_event")
        == before["other"] + 1
    )


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=2) as response:
        body: bytes = response.read()
        return body.decode()


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0
