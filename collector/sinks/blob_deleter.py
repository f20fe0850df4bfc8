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
  deleter deleted are *missing*: more of them in a batch than
  ``settings.max_missing`` stops the deleter with that batch uncommitted (its
  root is likely not the storage). A replay older than the retention finds
  its files missing too: let it through with ``max_missing`` 1.
* **Dedupe by event id.** The relay publishes at least once; a re-publication
  carries the same id, so recent ids are remembered.
* **Commit after delete.** Offsets are committed per batch, explicitly per
  partition, and only up to records whose delete is done; before partitions
  move to another member the batch in hand finishes and commits.
* **Never stall on a bad record.** A record that is not a CloudEvent, or a
  digest that is not ``<algorithm>:<hex>`` (which could name a path outside the
  storage), is logged with its topic, partition and offset and skipped. An
  unavailable database, storage or broker is waited out with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError

from collector import metrics
from collector.backoff import Backoff, Outage
from collector.config import Settings
from collector.db.connector import DISCONNECTS, create_pool
from collector.db.queries import load_queries
from collector.errors import CollectorError, StorageError
from collector.health import Health
from collector.kafka import client_options, reach_broker
from collector.sinks.storage import (
    FilesystemStorage,
    InvalidDigest,
    ObjectStorageError,
    Storage,
    blob_key,
)
from events import BlobRemoved, InvalidRecord, decode_event, removal_of

log = structlog.get_logger(__name__)

_QUERIES = load_queries("sinks.sql")

_POLL_MS = 200
_COMMIT_TIMEOUT_S = 10.0
_CLOSE_TIMEOUT_S = 10.0
#: Enough to cover any redelivery window the relay can produce (a batch or two).
DEDUPE_CAPACITY = 100_000
_PRUNE_EVERY_S = 3600.0


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
        #: Held while a batch is processed and committed; a revocation waits for it.
        self._in_hand = asyncio.Lock()
        #: Next offset to commit, per partition, of records whose delete is done.
        self._done: dict[TopicPartition, int] = {}
        self._broker = Outage("broker")
        self._database = Outage("database")
        self._storage_outage = Outage("storage")
        #: When a record last came, or partitions were last assigned: the idle clock.
        self._active_at: float | None = None
        #: Whether the group has given this member its (possibly no) partitions.
        self._joined = False
        self._pool: asyncpg.Pool[asyncpg.Record] | None = None
        self.counts = Counts()

    def stop(self) -> None:
        """Ask ``run()`` to finish the batch in hand, commit it and return."""
        self._stopping.set()

    async def run(self) -> None:
        """Delete what each ``blob-removed`` event names until stopped. Outages are
        waited out; an error no wait can fix (say, a refused query) propagates. With a
        metrics port, metrics and health probes are served meanwhile."""
        settings = self._settings
        health = Health(asyncio.get_running_loop())
        health.require("database", lambda: not self._database.down)
        health.require("broker", lambda: not self._broker.down)
        health.require("storage", lambda: not self._storage_outage.down)
        health.require("consumer", lambda: self._joined)
        health.require("running", lambda: not self._stopping.is_set())
        async with metrics.served(settings.metrics_address, settings.metrics_port, health):
            await self._run()

    async def _run(self) -> None:
        settings = self._settings
        topic = settings.topic_removals
        log.info("blob_deleter_started", topic=topic, group_id=settings.sink_group_id)
        self._pool = await create_pool(
            settings.database_url, max_size=2, wait_s=settings.connect_wait_s
        )
        try:
            consumer = AIOKafkaConsumer(
                group_id=settings.sink_group_id,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                **client_options(settings),
            )
            consumer.subscribe(
                [topic], listener=_Rebalance(lambda: self._settle(consumer), self._on_assigned)
            )
            try:
                await reach_broker(consumer.start, wait_s=settings.connect_wait_s)
                await self._consume(consumer)
                await self._commit(consumer)  # whatever a failed commit left
            finally:
                await _stop_consumer(consumer)
        finally:
            await self._pool.close()
            log.info("blob_deleter_stopped", **vars(self.counts))

    # -- the consumer loop -----------------------------------------------------

    async def _consume(self, consumer: Any) -> None:
        loop = asyncio.get_running_loop()
        backoff = Backoff()
        while not self._stopping.is_set():
            try:
                batches = await consumer.getmany(
                    timeout_ms=_POLL_MS, max_records=self._settings.batch_size
                )
            except KafkaError as exc:
                if not exc.retriable:
                    raise CollectorError(
                        f"cannot consume {self._settings.topic_removals}: {exc!r}"
                    ) from exc
                self._broker.failed(exc)
                await self._pause(backoff.next())
                continue
            if self._broker.recovered():
                backoff = Backoff()
            if batches:
                self._active_at = loop.time()
                async with self._in_hand:
                    done, before = dict(self._done), replace(self.counts)
                    await self._process(batches.items())
                    try:
                        self._check_missing(before)
                    except TooManyMissing:
                        self._done = done  # nothing of this batch may be committed
                        raise
                    await self._commit(consumer)
                await self._prune_now_and_then()
            elif (
                self._exit_when_idle is not None
                and self._active_at is not None  # not idle before the group assigned us
                and loop.time() - self._active_at >= self._exit_when_idle
            ):
                log.info("blob_deleter_idle", idle_s=self._exit_when_idle)
                return

    async def _process(self, batches: Iterable[tuple[TopicPartition, list[Any]]]) -> None:
        for tp, records in batches:
            for record in records:
                if not await self._handle(record):
                    return  # stopped during an outage: the rest is redelivered
                self._done[tp] = record.offset + 1

    def _check_missing(self, before: Counts) -> None:
        """Stop if, since ``before``, more of the files found were missing (gone, and
        no deleter deleted them) than ``settings.max_missing`` allows."""
        missing = self.counts.missing - before.missing
        deleted = self.counts.deleted - before.deleted
        found = deleted + self.counts.already_gone - before.already_gone
        if missing > self._max_missing * found:
            raise TooManyMissing(
                f"{missing} of the {found} blob files of a batch are not in {self._storage}"
                f" and no deleter deleted them (more than --max-missing"
                f" {self._max_missing:g}): is the storage mounted there? Offsets not"
                " committed; if those files are truly gone, run once with --max-missing 1"
            )

    async def _prune_now_and_then(self) -> None:
        """Forget deletions older than the retention, once an hour."""
        assert self._pool is not None  # set by run()
        now = asyncio.get_running_loop().time()
        if self._pruned_at is not None and now - self._pruned_at < _PRUNE_EVERY_S:
            return
        self._pruned_at = now
        try:
            async with self._pool.acquire() as conn:
                pruned = await conn.fetchval(_QUERIES["prune_deletions"], self._retention)
        except (*DISCONNECTS, asyncpg.PostgresError) as exc:
            log.warning("prune_failed", error=repr(exc))  # the next round retries
            return
        if pruned:
            log.info("deletions_pruned", count=pruned)

    def _on_assigned(self, partitions: list[int]) -> None:
        self._joined = True
        log.info("partitions_assigned", partitions=partitions)
        self._active_at = asyncio.get_running_loop().time()

    async def _settle(self, consumer: Any) -> None:
        """Before partitions move: let the batch in hand finish, and commit it."""
        async with self._in_hand:
            await self._commit(consumer)

    async def _commit(self, consumer: Any) -> None:
        # A partition revoked meanwhile is another member's now: it redoes that work.
        for tp in set(self._done) - consumer.assignment():
            del self._done[tp]
        if not self._done:
            return
        offsets = dict(self._done)
        try:
            await asyncio.wait_for(asyncio.shield(consumer.commit(offsets)), _COMMIT_TIMEOUT_S)
        except (KafkaError, TimeoutError) as exc:
            # Kept for the next commit; a rebalance meanwhile redelivers, harmlessly.
            log.warning("offsets_commit_failed", error=repr(exc))
            return
        self._done.clear()
        log.debug("offsets_committed", offsets={str(tp.partition): o for tp, o in offsets.items()})

    # -- one record ------------------------------------------------------------

    async def _handle(self, record: Any) -> bool:
        """Settle one record; False when stopped before its delete could be done."""
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
                return True
            if not isinstance(removal, BlobRemoved):
                self.counts.other += 1
                metrics.RECORDS_SKIPPED.labels("other_event").inc()
                return True
            with structlog.contextvars.bound_contextvars(event_id=event.id):
                if event.id in self._seen:
                    self.counts.duplicates += 1
                    metrics.RECORDS_SKIPPED.labels("duplicate").inc()
                    log.info("duplicate_skipped")
                    return True
                try:
                    blob_key(removal.digest)
                except InvalidDigest as exc:  # its message quotes the digest, cut short
                    self.counts.invalid += 1
                    metrics.RECORDS_SKIPPED.labels("invalid").inc()
                    log.warning("digest_refused", reason=str(exc))
                    return True
                with structlog.contextvars.bound_contextvars(digest=removal.digest):
                    outcome = await self._retrying(removal.digest)
                if outcome is None:
                    return False
                self._seen.add(event.id)
                self._count(outcome, removal)
                return True

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

    async def _retrying(self, digest: str) -> Outcome | None:
        """``_delete`` until it succeeds; None when stopped meanwhile."""
        backoff = Backoff()
        while True:
            try:
                outcome = await self._delete(digest)
            except DISCONNECTS as exc:
                self._database.failed(exc)
            except ObjectStorageError as exc:
                self._storage_outage.failed(exc)
            except asyncpg.PostgresError as exc:
                raise StorageError(f"cannot check blob {digest}: {exc}") from exc
            else:
                self._database.recovered()
                self._storage_outage.recovered()
                return outcome
            if await self._pause(backoff.next()):
                return None

    async def _delete(self, digest: str) -> Outcome:
        """Lock the digest, re-check the database, delete the bytes, commit."""
        assert self._pool is not None  # set by run()
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(_QUERIES["lock_digest"], digest)
            if await conn.fetchval(_QUERIES["blob_exists"], digest):
                return Outcome.REPUSHED
            known = await conn.fetchval(_QUERIES["was_deleted"], digest)
            if not known:
                # Committed on its own before the bytes go: a crash or a lost connection
                # between the delete and our commit must not make the redelivered
                # record find them missing.
                await self._pool.execute(_QUERIES["record_deletion"], digest)
            # Still under the lock: a registry finalizing this digest waits for our commit.
            if await self._storage.delete(digest):
                if known:  # pushed again and removed again: the retention starts anew
                    await self._pool.execute(_QUERIES["record_deletion"], digest)
                return Outcome.DELETED
            if known:
                return Outcome.ALREADY_GONE
            await self._pool.execute(_QUERIES["forget_deletion"], digest)  # nothing was there
            return Outcome.MISSING

    # -- waiting ---------------------------------------------------------------

    async def _pause(self, seconds: float) -> bool:
        """Wait ``seconds`` or until ``stop()``; True when stopping."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._stopping.wait()
        return self._stopping.is_set()


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka is untyped
    """Runs ``settle`` before the group takes partitions away from this member, and
    ``assigned`` once it has given this member its (possibly no) partitions."""

    def __init__(
        self, settle: Callable[[], Awaitable[None]], assigned: Callable[[list[int]], None]
    ) -> None:
        self._settle = settle
        self._assigned = assigned

    async def on_partitions_revoked(self, revoked: object) -> None:
        await self._settle()

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        self._assigned(sorted(tp.partition for tp in assigned))


async def _stop_consumer(consumer: Any) -> None:
    try:
        await asyncio.wait_for(consumer.stop(), _CLOSE_TIMEOUT_S)
    except (KafkaError, TimeoutError) as exc:
        log.warning("consumer_stop_failed", error=repr(exc))
