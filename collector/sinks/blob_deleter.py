"""The blob deleter: deletes the bytes of every removed blob (`collector sink blob-deleter`).

The reference downstream consumer of ``registry.gc.removals``, and the template
for an S3 or GCS deleter: implement :class:`~collector.sinks.storage.Storage`
for the object store and keep everything else. What makes it safe:

* **Lock, re-check, delete, commit.** Storage is content-addressed: the digest
  can be pushed again after its removal. For each ``blob-removed`` event the
  deleter opens a PostgreSQL transaction, takes ``pg_advisory_xact_lock`` on a
  hash of the digest (a registry finalizing an upload takes the same lock,
  DESIGN §3.7), checks that no ``blob`` row with that digest exists again, and
  deletes the bytes *while still holding the lock*. A re-pushed digest keeps
  its bytes.
* **Idempotent delete.** Bytes a deleter deleted before (remembered in
  ``gc.blob_deletion`` for the retention, written before the bytes go) count
  as done: redelivery and a second deleter are harmless. Bytes gone that no
  deleter deleted are *missing*: more of them in a batch (one partition's
  records of a poll) than ``settings.max_missing`` stops the deleter with that
  batch uncommitted (its root is likely not the storage). A replay older than
  the retention finds its files missing too: let it through with
  ``max_missing`` 1.
* **Dedupe by event id.** The relay publishes at least once; a re-publication
  carries the same id, so recent ids are remembered.
* **Commit after delete.** The partitioned consumer hands over each
  partition's batches in order and commits, per partition, only up to records
  whose delete is done; before partitions move to another member the batches in
  hand finish and commit (or, after 10 s, are abandoned uncommitted: the next
  owner finds their files deleted before).
* **Never stall on a bad record.** A record that is not a CloudEvent, or a
  digest that is not ``<algorithm>:<hex>`` (which could name a path outside the
  storage), is logged with its topic, partition and offset and skipped. An
  unavailable database, storage or broker is waited out with backoff.
"""

from __future__ import annotations

import asyncio
import enum
from collections import OrderedDict
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import structlog
from aiokafka import TopicPartition

from collector import metrics
from collector.backoff import Retrying, transient
from collector.config import Settings
from collector.db.connector import PoolDatabase, create_pool
from collector.db.queries import load_queries
from collector.errors import CollectorError, StorageError
from collector.health import Health
from collector.partitioned_consumer import PartitionedConsumer
from collector.sinks.storage import (
    FilesystemStorage,
    InvalidDigest,
    ObjectStorageError,
    Storage,
    blob_key,
)
from events import BlobRemoved, InvalidRecord, causation_id, decode_event, removal_of

log = structlog.get_logger(__name__)

_QUERIES = load_queries("sinks.sql")

#: Enough to cover any redelivery window the relay can produce (a batch or two).
DEDUPE_CAPACITY = 100_000
_PRUNE_EVERY_S = 3600.0
#: How often the database is asked whether it answers (for /readyz), and how long
#: the answer may take.
_PING_EVERY_S = 5.0
_PING_TIMEOUT_S = 5.0


class Outcome(enum.Enum):
    DELETED = "deleted"
    #: Gone, and a deleter deleted it within the retention (a redelivery).
    ALREADY_GONE = "already_gone"
    #: Gone, and no deleter ever deleted it: not what this storage should hold.
    MISSING = "missing"
    REPUSHED = "repushed"


@dataclass
class Counts:
    """What a deleter did, by outcome."""

    deleted: int = 0
    #: Files found gone, ``missing`` included.
    already_gone: int = 0
    #: Of those, files no deleter ever deleted.
    missing: int = 0
    repushed: int = 0
    duplicates: int = 0
    other: int = 0
    invalid: int = 0

    def summary(self) -> str:
        return (
            f"blob-deleter: {self.deleted} deleted, {self.already_gone} already gone"
            f" ({self.missing} never deleted by a deleter), {self.repushed} re-pushed"
            f" skipped, {self.duplicates} duplicate(s), {self.other} other event(s)"
            f" skipped, {self.invalid} invalid record(s) skipped"
        )


class TooManyMissing(CollectorError):
    """A batch found more files gone that no deleter deleted than ``--max-missing``
    allows: the storage root is likely not the storage. Its offsets stay uncommitted."""


class RecentIds:
    """The last ``capacity`` ids seen, least recently seen forgotten first."""

    def __init__(self, capacity: int = DEDUPE_CAPACITY) -> None:
        self._capacity = capacity
        self._ids: OrderedDict[str, None] = OrderedDict()

    def __contains__(self, event_id: object) -> bool:
        return event_id in self._ids

    def add(self, event_id: str) -> None:
        self._ids[event_id] = None
        self._ids.move_to_end(event_id)
        if len(self._ids) > self._capacity:
            self._ids.popitem(last=False)


class BlobDeleter:
    """``run()`` until ``stop()`` (or idle for ``exit_when_idle`` seconds)."""

    def __init__(
        self,
        settings: Settings,
        storage: Storage | Path,
        *,
        exit_when_idle: float | None = None,
        dedupe_capacity: int = DEDUPE_CAPACITY,
    ) -> None:
        self._settings = settings
        self._storage = FilesystemStorage(storage) if isinstance(storage, Path) else storage
        self._max_missing = settings.max_missing
        self._retention = timedelta(seconds=settings.retention_s)
        self._pruned_at: float | None = None
        self._exit_when_idle = exit_when_idle
        self._seen = RecentIds(dedupe_capacity)
        self._stopping = asyncio.Event()
        self._database_outage = Retrying("database", self._stopping)
        self._storage_outage = Retrying("storage", self._stopping)
        #: A delete holds two of the pool's two connections (the digest's lock, and
        #: the deletion recorded on its own): one delete at a time, whatever partition.
        self._one_delete = asyncio.Lock()
        self._consumer = PartitionedConsumer(
            settings,
            topic=settings.topic_removals,
            group_id=settings.sink_group_id,
            handle=self._handle_batch,
            stopping=self._stopping,
            name="blob-deleter",
            max_records=settings.sink_poll_records,
            exit_when_idle=exit_when_idle,
        )
        self._database: PoolDatabase | None = None
        self.counts = Counts()

    def stop(self) -> None:
        """Ask ``run()`` to finish the batches in hand, commit them and return."""
        self._stopping.set()

    async def run(self) -> None:
        """Delete what each ``blob-removed`` event names until stopped. Outages are
        waited out; an error no wait can fix (say, a refused query) propagates. With a
        metrics port, metrics and health probes are served meanwhile."""
        settings = self._settings
        health = Health(asyncio.get_running_loop())
        health.require("database", lambda: not self._database_outage.outage.down)
        health.require("broker", lambda: self._consumer.broker_available)
        health.require("storage", lambda: not self._storage_outage.outage.down)
        health.require("consumer", lambda: self._consumer.in_group)
        health.require("running", lambda: not self._stopping.is_set())
        async with metrics.served(settings.metrics_address, settings.metrics_port, health):
            await self._run()

    async def _run(self) -> None:
        settings = self._settings
        log.info(
            "blob_deleter_started", topic=settings.topic_removals, group_id=settings.sink_group_id
        )
        pool = await create_pool(settings.database_url, max_size=2, wait_s=settings.connect_wait_s)
        self._database = PoolDatabase(pool)
        watching = asyncio.create_task(self._watch_database(), name="database-watch")
        try:
            await self._consumer.run()
            if not self._stopping.is_set():
                log.info("blob_deleter_idle", idle_s=self._exit_when_idle)
        finally:
            watching.cancel()
            await asyncio.wait([watching])
            await pool.close()
            log.info("blob_deleter_stopped", **vars(self.counts))

    async def _watch_database(self) -> None:
        """Ask the database whether it answers every :data:`_PING_EVERY_S`, until
        cancelled: a deleter with nothing to delete has no other reason to, and /readyz
        would say it is ready while it could delete nothing. The outage it finds or ends
        is the deletes' own (logged and counted once). Whatever the database or the wait
        raise is an answer: only cancelling ends this."""
        assert self._database is not None  # set by _run()
        while True:
            try:
                # Never one of a delete's two connections (the pool has two).
                async with (
                    self._one_delete,
                    asyncio.timeout(_PING_TIMEOUT_S),
                    self._database.connection() as conn,
                ):
                    await conn.fetchval(_QUERIES["ping"])
            except (StorageError, TimeoutError) as exc:
                self._database_outage.outage.failed(exc)
            else:
                self._database_outage.succeeded()
            await asyncio.sleep(_PING_EVERY_S)

    # -- one partition's batch -------------------------------------------------

    async def _handle_batch(self, partition: TopicPartition, records: list[Any]) -> None:
        """Settle a partition's records in order; they count as completed together,
        once the files found missing are within ``max_missing``. Stopped during an
        outage, the records settled before it are completed, the rest redelivered."""
        settled: list[int] = []
        found = missing = 0
        for record in records:
            try:
                outcome = await self._handle(record)
            except CollectorError as exc:
                if not transient(exc):
                    raise
                break  # stopping while a dependency is away
            if outcome is not None and outcome is not Outcome.REPUSHED:
                found += 1
                missing += outcome is Outcome.MISSING
            settled.append(record.offset)
        self._check_missing(found, missing)
        self._consumer.completed(partition, settled)
        await self._prune_now_and_then()

    def _check_missing(self, found: int, missing: int) -> None:
        """Stop if more of the files ``found`` by a batch were ``missing`` (gone, and no
        deleter deleted them) than ``settings.max_missing`` allows: nothing of that
        batch is committed."""
        if missing > self._max_missing * found:
            raise TooManyMissing(
                f"{missing} of the {found} blob files of a batch are not in {self._storage}"
                f" and no deleter deleted them (more than --max-missing"
                f" {self._max_missing:g}): is the storage mounted there? Offsets not"
                " committed; if those files are truly gone, run once with --max-missing 1"
            )

    async def _prune_now_and_then(self) -> None:
        """Forget deletions older than the retention, once an hour."""
        assert self._database is not None  # set by run()
        now = asyncio.get_running_loop().time()
        if self._pruned_at is not None and now - self._pruned_at < _PRUNE_EVERY_S:
            return
        self._pruned_at = now
        try:
            async with self._database.connection() as conn:
                pruned = await conn.fetchval(_QUERIES["prune_deletions"], self._retention)
        except StorageError as exc:
            log.warning("prune_failed", error=repr(exc))  # the next round retries
            return
        if pruned:
            log.info("deletions_pruned", count=pruned)

    # -- one record ------------------------------------------------------------

    async def _handle(self, record: Any) -> Outcome | None:
        """Settle one record: what its delete came to, None when it is skipped. A
        dependency away while stopping raises its (transient) error."""
        with structlog.contextvars.bound_contextvars(
            topic=record.topic, partition=record.partition, offset=record.offset
        ):
            try:
                event = decode_event(record.value)
                removal = removal_of(event)
            except InvalidRecord as exc:
                self.counts.invalid += 1
                metrics.RECORDS_SKIPPED.labels("invalid").inc()
                log.warning("record_skipped", reason=str(exc))
                return None
            if not isinstance(removal, BlobRemoved):
                self.counts.other += 1
                metrics.RECORDS_SKIPPED.labels("other_event").inc()
                return None
            # The request that caused the removal: its lines follow it to the bytes.
            with structlog.contextvars.bound_contextvars(
                event_id=event.id, causation_id=causation_id(event)
            ):
                if event.id in self._seen:
                    self.counts.duplicates += 1
                    metrics.RECORDS_SKIPPED.labels("duplicate").inc()
                    log.info("duplicate_skipped")
                    return None
                try:
                    blob_key(removal.digest)
                except InvalidDigest as exc:  # its message quotes the digest, cut short
                    self.counts.invalid += 1
                    metrics.RECORDS_SKIPPED.labels("invalid").inc()
                    log.warning("digest_refused", reason=str(exc))
                    return None
                with structlog.contextvars.bound_contextvars(digest=removal.digest):
                    outcome = await self._retrying(removal.digest)
                self._seen.add(event.id)
                self._count(outcome, removal)
                return outcome

    def _count(self, outcome: Outcome, removal: BlobRemoved) -> None:
        digest = removal.digest
        metrics.BLOBS_SETTLED.labels(outcome.value).inc()
        if outcome is Outcome.DELETED:
            self.counts.deleted += 1
            metrics.BYTES_FREED.inc(max(removal.size, 0))
            log.info("blob_deleted", digest=digest)
        elif outcome is Outcome.ALREADY_GONE:
            self.counts.already_gone += 1
            log.info("blob_already_gone", digest=digest)
        elif outcome is Outcome.MISSING:
            self.counts.already_gone += 1
            self.counts.missing += 1
            log.warning("blob_missing", digest=digest)
        else:
            self.counts.repushed += 1
            log.info("blob_repushed", digest=digest)

    async def _retrying(self, digest: str) -> Outcome:
        """``_delete`` until it succeeds, waiting out database and storage outages; the
        outage's error is raised when stopping meanwhile."""
        while True:
            try:
                async with self._one_delete:
                    outcome = await self._delete(digest)
            except ObjectStorageError as exc:
                if await self._storage_outage.failed(exc):
                    raise
            except StorageError as exc:
                if not transient(exc):
                    raise StorageError(f"cannot check blob {digest}: {exc}") from exc
                if await self._database_outage.failed(exc):
                    raise
            else:
                self._database_outage.succeeded()
                self._storage_outage.succeeded()
                return outcome

    async def _delete(self, digest: str) -> Outcome:
        """Lock the digest, re-check the database, delete the bytes, commit."""
        assert self._database is not None  # set by run()
        async with self._database.transaction() as conn:
            await conn.execute(_QUERIES["lock_digest"], digest)
            if await conn.fetchval(_QUERIES["blob_exists"], digest):
                return Outcome.REPUSHED
            known = await conn.fetchval(_QUERIES["was_deleted"], digest)
            if not known:
                # Committed on its own before the bytes go: a crash or a lost connection
                # between the delete and our commit must not make the redelivered
                # record find them missing.
                await self._on_its_own("record_deletion", digest)
            # Still under the lock: a registry finalizing this digest waits for our commit.
            if await self._unlinked_under_lock(digest):
                if known:  # pushed again and removed again: the retention starts anew
                    await self._on_its_own("record_deletion", digest)
                return Outcome.DELETED
            if known:
                return Outcome.ALREADY_GONE
            await self._on_its_own("forget_deletion", digest)  # nothing was there
            return Outcome.MISSING

    async def _unlinked_under_lock(self, digest: str) -> bool:
        """The storage's delete, finished before the caller's transaction ends however
        this task is cancelled (a hand-over giving up on the batch, a stop): leaving
        would release the digest's lock while the unlink may still run in its thread,
        and a registry re-pushing the digest could write its file just before it."""
        deleting = asyncio.ensure_future(self._storage.delete(digest))
        try:
            return await asyncio.shield(deleting)
        except asyncio.CancelledError:
            await asyncio.wait([deleting])
            raise

    async def _on_its_own(self, query: str, digest: str) -> None:
        """Run ``query`` on a connection of its own: it commits at once, whatever
        becomes of the transaction that holds the digest's lock."""
        assert self._database is not None  # set by run()
        async with self._database.connection() as conn:
            await conn.execute(_QUERIES[query], digest)
