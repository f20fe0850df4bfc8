"""Publishes outbox rows to the removals topic, one relay at a time across all processes.

Ordering: a key's events must reach Kafka in outbox id order. Two things keep it:

* One publisher. The relay holds a session-level advisory lock on a dedicated
  connection, and claims, publishes and marks its batches in transactions on
  that same connection. Should the connection die, the lock goes with it *and*
  so does the open claim: the relay that takes over claims the same rows again,
  in the same order. The rows both may send are then duplicates of the same
  sequence, which keeps each event's first appearance in id order (consumers
  drop duplicates by event id). Relays that do not get the lock stand by and
  try again every poll interval.
* The idempotent producer (``acks="all"``): the broker accepts a partition's
  batches only in sequence, so a failed batch is never overtaken by a later one
  of the same partition, and retries never duplicate within one producer.

A row is marked published only after the broker acknowledged every row of its
batch, in the transaction that claimed it; a crash in between means the batch
is sent again with the same event ids (CONTRACT §2.2: at least once).

Time to publication (``registry_gc_request_published_seconds``) is observed once
per request, exactly, however its events are spread over batches, relays and
processes, and whichever commits last, the worker finishing the request or the
relay marking its last event. The decision is not tied to the batch that
publishes a request's last event (the request may not be finished then, and
its finish may commit after any later check): every claim, empty ones included,
runs ``observe_published``, which marks each finished request none of whose
events waits any more, in the batch's transaction. Once a request is finished
its set of events is complete (the worker's finish commits after every engine
transaction of it), so that condition, once true, stays true, and the next
claim after the commit that made it true sees it. The mark is conditional on
not being marked yet, which PostgreSQL re-checks on the row's latest version
under its lock, so no two transactions ever mark a request; the observation is
made after the marking transaction committed, from the times stored (the last
``published_at`` of its events, the request's ``requested_at``), not from when
the check ran. (A commit whose outcome is unknown, a lost connection, may mark
without observing.)
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
from dataclasses import dataclass
from typing import Any

import asyncpg
import structlog
from asyncpg.transaction import Transaction

from collector import kafka, metrics
from collector.backoff import CLOSE_TIMEOUT_S, Retrying, close_quietly, sleep_until
from collector.config import Settings
from collector.db.connector import Connection, PoolDatabase, translated
from collector.db.queries import load_queries
from collector.errors import (
    BrokerUnavailable,
    CollectorError,
    DatabaseUnavailable,
    RecordTooLarge,
    StorageError,
)
from collector.logging import bound_causes
from collector.outbox import store
from events import CONTENT_TYPE

log = structlog.get_logger(__name__)

_QUERIES = load_queries("outbox.sql")

#: The advisory lock that makes a relay the publishing one (an arbitrary, fixed key).
LOCK_KEY = 0x6763_7265_6C61
#: The channel the outbox trigger (migration 0004) notifies on every insert.
CHANNEL = "gc_outbox"
_HEADERS = [("content-type", CONTENT_TYPE.encode())]

_LINGER_S = 0.05
#: How often `drain` looks at what is left.
_DRAIN_POLL_S = 0.2
#: No relay query takes long; one that does is on a dead connection.
_COMMAND_TIMEOUT_S = 60.0
#: The server drops a silent client within about 25 s, which frees the lock for a
#: standing-by relay (the default is two hours of silence).
_SESSION_SETTINGS = {
    "application_name": "collector-relay",
    "tcp_keepalives_idle": "10",
    "tcp_keepalives_interval": "5",
    "tcp_keepalives_count": "3",
    # A batch's transaction waits, idle, for the broker's acknowledgement (through
    # an outage, if need be); ending it would drop the relay lock mid-batch.
    "idle_in_transaction_session_timeout": "0",
}


class State(enum.Enum):
    CONNECTING = "connecting"
    STANDING_BY = "standing_by"
    ACTIVE = "active"
    STOPPED = "stopped"


class Relay:
    """``run()`` until ``stop()``; publishes while it holds the relay lock. With
    ``observes_requests`` (a service's relay), it also observes the requests whose
    events are all published; a command's relay (:func:`drain`) leaves them to the
    service's relays, whose processes serve the metric."""

    def __init__(
        self,
        pool: asyncpg.Pool[asyncpg.Record],
        settings: Settings,
        *,
        observes_requests: bool = True,
    ) -> None:
        #: For ``pending()``; the relay's own session uses ``settings.database_url``.
        self._database = PoolDatabase(pool)
        self._observes_requests = observes_requests
        self._settings = settings
        self._topic = settings.topic_removals
        self._poll_s = settings.relay_poll_interval_s
        self._stopping = asyncio.Event()
        self._wakeup = asyncio.Event()
        self.state = State.CONNECTING
        #: Events the broker acknowledged and this relay marked published.
        self.published = 0
        #: Batches published (empty claims excluded) and claims attempted.
        self.batches = 0
        self.claims = 0
        #: Publication attempts that failed on the broker.
        self.publish_failures = 0
        #: Events set aside because no broker takes one that large.
        self.undeliverable = 0
        self._broker = Retrying("broker", self._stopping)

    async def pending(self) -> int:
        """How many events still wait for publication (by any relay)."""
        async with self._database.connection() as conn:
            return await store.pending(conn)

    def stop(self) -> None:
        """Ask ``run()`` to return once the batch in hand is settled."""
        self._stopping.set()
        self._wakeup.set()

    async def run(self) -> None:
        """Stand by or publish until stopped. Database and broker outages are waited
        out; any other error propagates."""
        log.info("relay_started", topic=self._topic)
        database = Retrying("database", self._stopping)
        try:
            while not self._stopping.is_set():
                try:
                    await self._session(database)
                except DatabaseUnavailable as exc:
                    await database.failed(exc)
        finally:
            self.state = State.STOPPED
            log.info("relay_stopped", published=self.published)

    # -- one database session ------------------------------------------------

    async def _session(self, database: Retrying) -> None:
        """Connect, then lead (or stand by) until stopped or the connection is lost."""
        self.state = State.CONNECTING
        with translated():
            conn = await asyncpg.connect(
                self._settings.database_url,
                command_timeout=_COMMAND_TIMEOUT_S,
                server_settings=_SESSION_SETTINGS,
            )
        try:
            database.succeeded()
            with translated():
                await self._lead(conn)
        finally:
            self.state = State.CONNECTING
            await _close(conn)

    async def _lead(self, conn: asyncpg.Connection[asyncpg.Record]) -> None:
        """Take the relay lock (or stand by for it), then publish until stopped."""
        conn.add_termination_listener(lambda _conn: self._wakeup.set())
        while not self._stopping.is_set():
            if await conn.fetchval(_QUERIES["try_relay_lock"], LOCK_KEY):
                break
            if self.state is not State.STANDING_BY:
                self.state = State.STANDING_BY
                log.info("relay_standing_by")
            await sleep_until(self._stopping, self._poll_s)
        else:
            return
        await conn.add_listener(CHANNEL, self._on_notify)
        self.state = State.ACTIVE
        log.info("relay_activated", topic=self._topic)
        await self._publish_loop(conn)

    def _on_notify(self, *_args: object) -> None:
        self._wakeup.set()

    async def _publish_loop(self, conn: Connection) -> None:
        producer: Any = None
        try:
            while not self._stopping.is_set():
                self._wakeup.clear()
                try:
                    with kafka.translated(f"publish to {self._topic}"):
                        if producer is None:
                            producer = await self._start_producer()
                        count = await self._publish_batch(conn, producer)
                except BrokerUnavailable as exc:
                    self.publish_failures += 1
                    if producer is not None:
                        await close_quietly(producer.stop(), "producer")
                        producer = None
                    await self._broker.failed(exc)
                    continue
                self._broker.succeeded()
                if count < self._settings.relay_batch_size:  # drained: wait for news
                    metrics.OUTBOX_PENDING.set(0)
                    metrics.OUTBOX_OLDEST_AGE.set(0)
                    await sleep_until(self._wakeup, self._poll_s)  # a NOTIFY, or stop()
                    # Let a burst of commits land: one batch instead of one per commit.
                    await sleep_until(self._stopping, _LINGER_S)
                else:  # a backlog: say how large, and how late
                    metrics.OUTBOX_PENDING.set(await store.pending(conn))
                    metrics.OUTBOX_OLDEST_AGE.set(await store.oldest_pending_age(conn))
        finally:
            if producer is not None:
                await close_quietly(producer.stop(), "producer")

    async def _start_producer(self) -> Any:
        producer = kafka.producer(self._settings)
        try:
            await producer.start()
        except BaseException:
            await close_quietly(producer.stop(), "producer")
            raise
        return producer

    # -- one batch -------------------------------------------------------------

    async def _publish_batch(self, conn: Connection, producer: Any) -> int:
        """Claim, publish and mark one batch in one transaction; return its size."""
        transaction = conn.transaction()
        await transaction.start()
        settled = False
        try:
            rows = await conn.fetch(_QUERIES["claim"], self._settings.relay_batch_size)
            self.claims += 1
            refused = await self._produce(producer, rows) if rows else {}
            # The broker has every row: persist that, whatever cancels us meanwhile.
            decision = asyncio.ensure_future(self._settle(conn, transaction, rows, refused))
            try:
                requests_published = await asyncio.shield(decision)
            except asyncio.CancelledError:
                await asyncio.wait([decision])
                settled = not decision.cancelled() and decision.exception() is None
                raise
            settled = True
        finally:
            if not settled:
                # Rows stay pending; the error that got us here is what counts.
                with contextlib.suppress(StorageError), translated():
                    await transaction.rollback()
        for row in rows:  # counted once set aside for good, not on every attempt
            if row["id"] in refused:
                self._set_aside(row, refused[row["id"]])
        for request in requests_published:
            if request["seconds"] is not None:  # None: admitted before its time was kept
                metrics.PUBLISHED_SECONDS.labels(request["event_type"]).observe(request["seconds"])
        if published := len(rows) - len(refused):
            self.published += published
            metrics.EVENTS_PUBLISHED.inc(published)
            self.batches += 1
            delivered = [row for row in rows if row["id"] not in refused]
            for row in delivered:
                log.debug(
                    "event_published",
                    event_id=str(row["event_id"]),
                    causation_id=row["causation_id"],
                )
            with bound_causes(row["causation_id"] for row in delivered):
                log.info(
                    "batch_published",
                    count=published,
                    first_id=rows[0]["id"],
                    last_id=rows[-1]["id"],
                )
        return len(rows)

    async def _produce(self, producer: Any, rows: list[asyncpg.Record]) -> dict[int, str]:
        """Send every row and wait until the broker acknowledged them all; return the
        rows no broker can ever take (outbox id -> why), which were not sent."""
        # The broker's lines (an outage met while waiting) name the events' requests.
        with bound_causes(row["causation_id"] for row in rows):
            deliveries: list[asyncio.Future[Any]] = []
            refused: dict[int, str] = {}
            try:
                for row in rows:
                    try:
                        with kafka.translated(f"publish to {self._topic}"):
                            delivery = await producer.send(
                                self._topic,
                                row["event"].encode(),
                                key=row["key"].encode(),
                                headers=_HEADERS,
                            )
                    except RecordTooLarge as exc:
                        refused[row["id"]] = str(exc.__cause__)
                        continue
                    deliveries.append(delivery)
            except BaseException:
                # Nothing of this batch may still be on its way when the error is handled.
                await asyncio.gather(*deliveries, return_exceptions=True)
                raise
            await kafka.acknowledged(
                deliveries, settings=self._settings, broker=self._broker.outage
            )
            return refused

    def _set_aside(self, row: asyncpg.Record, reason: str) -> None:
        # A value no registry row may hold stops the relay: this one is kept, and named.
        self.undeliverable += 1
        metrics.EVENTS_UNDELIVERABLE.inc()
        log.error(
            "event_undeliverable",
            outbox_id=row["id"],
            event_id=str(row["event_id"]),
            causation_id=row["causation_id"],
            key=row["key"][:200],
            bytes=len(row["event"]),
            reason=reason,
        )

    async def _settle(
        self,
        conn: Connection,
        transaction: Transaction,
        rows: list[asyncpg.Record],
        refused: dict[int, str],
    ) -> list[asyncpg.Record]:
        """Mark the batch's rows and commit; return the requests whose events are all
        published now (see the module's docstring)."""
        if delivered := [row["id"] for row in rows if row["id"] not in refused]:
            await self._mark(conn, delivered)
        if refused:
            await conn.execute(_QUERIES["set_aside"], list(refused), list(refused.values()))
        requests_published = (
            await conn.fetch(_QUERIES["observe_published"]) if self._observes_requests else []
        )
        await transaction.commit()
        return requests_published

    async def _mark(self, conn: Connection, ids: list[int]) -> None:
        await conn.execute(_QUERIES["mark_published"], ids)


@dataclass(frozen=True, slots=True)
class Drained:
    """What :func:`drain` saw of the events pending when it began."""

    published: int
    #: Set aside by the relay: larger than the broker takes (column ``undeliverable``).
    set_aside: int
    waiting: int


async def drain(
    pool: asyncpg.Pool[asyncpg.Record], settings: Settings, *, stall_s: float
) -> Drained:
    """Publish every event pending now, then return: for a command that wrote events
    and has no service to relay them. A relay of its own does it, so a running
    service's relay keeps the lock (one publisher at a time) and publishes them
    instead, which counts the same. Gives up after ``stall_s`` seconds in which none
    left the outbox (broker or topic unavailable); they wait for the next relay."""
    database = PoolDatabase(pool)
    async with database.connection() as conn:
        through = await store.last_id(conn)
        waiting = initially = await store.pending(conn, through=through)
    if not waiting:
        return Drained(0, 0, 0)
    relay = Relay(pool, settings, observes_requests=False)
    running = asyncio.create_task(relay.run())
    loop = asyncio.get_running_loop()
    progress_at = loop.time()
    try:
        while waiting and loop.time() - progress_at < stall_s and not running.done():
            await asyncio.sleep(_DRAIN_POLL_S)
            async with database.connection() as conn:
                left = await store.pending(conn, through=through)
            if left < waiting:
                waiting, progress_at = left, loop.time()
    except BaseException:  # a signal: the batch in hand rolls back, its rows stay pending
        running.cancel()
        await asyncio.wait([running])
        raise
    relay.stop()
    # A batch waiting for the broker's acknowledgement would wait through the outage.
    if not (await asyncio.wait([running], timeout=CLOSE_TIMEOUT_S))[0]:
        running.cancel()
        await asyncio.wait([running])
    if not running.cancelled() and (error := running.exception()) is not None:
        if not isinstance(error, CollectorError):
            raise error
        log.error("drain_failed", error=str(error))  # e.g. the topic refuses writes
    async with database.connection() as conn:
        waiting = await store.pending(conn, through=through)
    # The relay may have set aside newer events too: count no more than left the outbox.
    set_aside = min(relay.undeliverable, initially - waiting)
    return Drained(initially - waiting - set_aside, set_aside, waiting)


async def _close(conn: asyncpg.Connection[asyncpg.Record]) -> None:
    """Close the session (which releases the lock); terminate it when that fails."""
    try:
        with translated():
            await asyncio.wait_for(conn.close(), CLOSE_TIMEOUT_S)
    except StorageError:
        conn.terminate()
    except BaseException:
        conn.terminate()
        raise
