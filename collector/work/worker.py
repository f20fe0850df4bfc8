"""Workers: claim due requests, run the engine on their repositories, record the outcomes.

A worker claims up to ``batch_size`` requests, each the oldest due one of its
repository, in a transaction on its own connection, and keeps that
transaction open while the engine works (on other connections); the outcomes
are written in the same transaction. A crash at any point rolls the claim
back, and the requests are claimed again, by this process or another: the
engine's work is idempotent and its own transactions are durable. Should the
claim's connection be lost, its row locks go with it and another worker may
claim the same requests: the work in hand is cancelled at once, so that no
request is ever worked by two workers at once. Cancelled is not yet ended: the
locks are gone the moment the server ends the session, while the cancelled work
still unwinds (rolling back its transactions) for a while; a worker of this
process that claims one of its repositories meanwhile waits for it to end
(:class:`InHand`) before it starts the engine there. (Another process has no such
guard: it relies on the cancellation arriving before its own claim and start.)

Requests are re-validated here, when due (CONTRACT §2.1): a ``tag-expired``
acts only while the tag still has the event's ``lifetime_end_ms`` (a
``legacy-tag-expired``: its pre-OCI tag, the event's ``lifetime_end_ts``); one
whose tag is not yet past its window is deferred, durably, to the moment it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator, Coroutine, Iterable, Sequence
from typing import Any, TypeVar

import asyncpg
import structlog

from collector import metrics
from collector.backoff import Backoff, Retrying, sleep_until, transient
from collector.clock import Clock
from collector.config import Settings
from collector.db.connector import Connection, PoolDatabase, translated
from collector.dead_letters import DeadLetters, Origin
from collector.engine import Cause, Deferred, Engine, ExpiredTag, Finished, Outcome
from collector.errors import (
    BrokerUnavailable,
    Conflict,
    Contention,
    DatabaseUnavailable,
    RepositoryNotFound,
    RepositoryNotMarked,
)
from collector.logging import bound_causes
from collector.work import queue
from collector.work.queue import WorkItem
from events import RejectionReason

log = structlog.get_logger(__name__)

T = TypeVar("T")
#: A claimed request once handled: its outcome, and (finished with removals committed)
#: the seconds from its time to then.
Settled = tuple[WorkItem, Outcome, float | None]


async def while_held(conn: Connection, work: Coroutine[Any, Any, T]) -> T:
    """``work``, cancelled as soon as ``conn`` (which holds a claim's row locks) is lost:
    the locks went with it, and another worker may claim the same requests now."""
    task = asyncio.ensure_future(work)
    lost = False

    def on_lost(_: object) -> None:
        nonlocal lost
        lost = True
        task.cancel()

    conn.add_termination_listener(on_lost)
    try:
        return await task
    except asyncio.CancelledError:
        if lost:
            raise DatabaseUnavailable("lost the connection holding the claim") from None
        raise
    finally:
        conn.remove_termination_listener(on_lost)


class InHand:
    """The repositories this process's workers have engine work on, each until that
    work has ended: cancelled (its claim lost), it may still be unwinding, with a
    transaction open, while the server has released the claim's locks already."""

    def __init__(self) -> None:
        self._ended: dict[int, asyncio.Event] = {}

    @contextlib.asynccontextmanager
    async def taking(self, repository_ids: Iterable[int]) -> AsyncIterator[None]:
        """Hold ``repository_ids``, once the work in hand on any of them has ended."""
        wanted = set(repository_ids)
        while earlier := [self._ended[id_] for id_ in wanted if id_ in self._ended]:
            log.info("repository_still_in_hand", repositories=sorted(wanted & set(self._ended)))
            await earlier[0].wait()
        # No await since the check: all of them or none, so no two takers wait on each other.
        ended = asyncio.Event()
        for id_ in wanted:
            self._ended[id_] = ended
        try:
            yield
        finally:
            for id_ in wanted:
                del self._ended[id_]
            ended.set()


class Workers:
    """``concurrency`` workers side by side; ``run()`` until ``stop()``."""

    def __init__(
        self,
        pool: asyncpg.Pool[asyncpg.Record],
        engine: Engine,
        clock: Clock,
        settings: Settings,
        dead_letters: DeadLetters,
    ) -> None:
        self._database = PoolDatabase(pool)
        self._engine = engine
        self._clock = clock
        self._concurrency = settings.repository_concurrency
        self._batch_size = settings.work_batch_size
        self._poll_s = settings.work_poll_interval_s
        self._name = f"{socket.gethostname()}:{os.getpid()}"
        self._stopping = asyncio.Event()
        #: For requests refused only when their turn comes.
        self._dead_letters = dead_letters
        self._wakeup = asyncio.Event()
        #: Repositories whose engine work has not ended yet (claim lost or not).
        self._in_hand = InHand()
        #: Requests being worked on right now.
        self.busy = 0
        #: Finished requests by outcome, and deferrals.
        self.outcomes: Counter[str] = Counter()
        self.deferred = 0

    def wake(self) -> None:
        """New work may be due: look now rather than at the next poll."""
        self._wakeup.set()

    def stop(self) -> None:
        """Finish the requests in hand, claim no more."""
        self._stopping.set()
        self._wakeup.set()

    async def run(self) -> None:
        log.info("workers_started", workers=self._concurrency, name=self._name)
        try:
            async with asyncio.TaskGroup() as group:
                for number in range(self._concurrency):
                    group.create_task(self._loop(), name=f"worker-{number}")
        finally:
            log.info("workers_stopped", outcomes=dict(self.outcomes), deferred=self.deferred)

    async def _loop(self) -> None:
        # The engine gives up on a lost database after its retries: wait longer here.
        database, contended = Retrying("database", self._stopping), Backoff()
        while not self._stopping.is_set():
            try:
                worked = await self._work_batch()
            except BrokerUnavailable:
                # Stopping while a late dead letter waited for the broker: the claim is
                # rolled back, and the next run redoes it (the letter's id is the same).
                continue
            except DatabaseUnavailable as exc:
                await database.failed(exc)
                continue
            except (Contention, Conflict) as exc:
                # Pushes kept winning the engine's races (or won one of the claim's own):
                # the claim is rolled back, try again later.
                log.warning("claim_contended", error=str(exc))
                await sleep_until(self._stopping, contended.next())
                continue
            database.succeeded()
            contended = Backoff()
            if not worked:
                await sleep_until(self._wakeup, self._poll_s)  # new work, stop(), or a poll
                self._wakeup.clear()

    async def _work_batch(self) -> bool:
        """Claim due requests (of different repositories) and see them through; False
        when none is due."""
        started = time.monotonic()
        claimed: list[str] = []
        async with self._database.connection() as conn:
            try:
                async with conn.transaction():
                    items = await queue.claim(conn, self._clock.now_ms(), self._batch_size)
                    if not items:
                        return False
                    claimed = [item.event_id for item in items]
                    with _bound(items):
                        log.info("requests_claimed", event_ids=claimed)
                    settled = await self._see_through(conn, items)
            except BaseException as exc:
                if claimed:  # rolled back: these requests are anyone's to claim again
                    with _bound(items):
                        log.warning("claim_abandoned", event_ids=claimed, error=repr(exc))
                raise
            # Counted once committed, before any other worker may claim these again (no
            # await in between): a commit lost with the connection redoes the requests.
            seconds = time.monotonic() - started
            for item, outcome, reclaim_s in settled:
                with _bound([item]):
                    self._record(item, outcome, seconds, reclaim_s)
        # The repositories' next requests may be claimable now: idle workers, look.
        self.wake()
        return True

    async def _see_through(self, conn: Connection, items: list[WorkItem]) -> list[Settled]:
        """Handle the claimed requests and record their outcomes in the claim's
        transaction; return them, and the requests queued behind them made stale."""
        self.busy += len(items)
        try:
            outcomes = await while_held(conn, self._handle_in_turn(conn, items))
            settled: list[Settled] = []
            for item, outcome in zip(items, outcomes, strict=True):
                assert item.id is not None  # claimed rows have one
                reclaim_s = None
                if isinstance(outcome, Deferred):
                    await queue.defer(conn, item.id, outcome.due_at_ms)
                else:
                    reclaim_s = await queue.finish(conn, item.id, outcome, self._name)
                settled.append((item, outcome, reclaim_s))
            # The expiries queued behind these that the work made stale end now.
            repositories = [item.repository_id for item in items]
            stale = await queue.finish_stale(conn, repositories, self._name)
            return settled + [(item, Finished.STALE, reclaim_s) for item, reclaim_s in stale]
        finally:
            self.busy -= len(items)

    def _record(
        self, item: WorkItem, outcome: Outcome, seconds: float, reclaim_s: float | None
    ) -> None:
        metrics.REQUEST_SECONDS.labels(item.event_type).observe(seconds)
        if reclaim_s is not None:
            metrics.RECLAIMED_SECONDS.labels(item.event_type).observe(reclaim_s)
        # The request's ids are bound by the caller.
        if isinstance(outcome, Deferred):
            self.deferred += 1
            metrics.REQUESTS_DEFERRED.labels(item.event_type).inc()
            log.info("request_deferred", due_at_ms=outcome.due_at_ms, why=outcome.why)
        else:
            self.outcomes[outcome] += 1
            metrics.REQUESTS_FINISHED.labels(item.event_type, outcome).inc()
            log.info("request_finished", outcome=outcome, duration_ms=round(seconds * 1000, 1))

    async def _handle_in_turn(self, conn: Connection, items: list[WorkItem]) -> list[Outcome]:
        """:meth:`_handle_guarded`, once the work of a lost claim on the same repositories
        (the server released its locks at once, and this claim took them) has ended:
        never two engine runs on a repository at once. Runs inside the task
        :func:`while_held` cancels, so that the repositories are let go only when
        this work has ended, however it ends."""
        async with self._in_hand.taking(item.repository_id for item in items):
            return await self._handle_guarded(conn, items)

    async def _handle_guarded(self, conn: Connection, items: list[WorkItem]) -> list[Outcome]:
        """Each request's outcome, whatever a request does to the engine: when handling
        fails for a reason waiting will not change (not an outage), the requests are
        handled one by one, and each that fails alone ends ``failed`` with a dead letter
        (``unprocessable``). The service goes on with the rest: no poison stops it."""
        try:
            return await self._handle_in_savepoint(conn, items)
        except Exception as exc:
            if transient(exc):
                raise
            if len(items) == 1:
                return [await self._unprocessable(items[0], exc)]
            with _bound(items):
                log.warning("batch_failed", error=repr(exc), requests=len(items))
        outcomes: list[Outcome] = []
        for item in items:
            try:
                outcomes.extend(await self._handle_in_savepoint(conn, [item]))
            except Exception as exc:
                if transient(exc):
                    raise
                outcomes.append(await self._unprocessable(item, exc))
        return outcomes

    async def _handle_in_savepoint(self, conn: Connection, items: list[WorkItem]) -> list[Outcome]:
        """:meth:`_handle` in a savepoint, so that a failed statement spares the claim;
        what the database raises there leaves translated (lost: retriable)."""
        with translated():
            async with conn.transaction():
                return await self._handle(conn, items)

    async def _unprocessable(self, item: WorkItem, error: Exception) -> Outcome:
        """Finish a request that cannot be processed: logged with its traceback, counted
        (outcome ``failed``) and dead-lettered with the error and its original record."""
        detail = f"processing the request failed: {error!r}"
        with _bound([item]):
            log.error("request_failed", exc_info=error)
            await self._dead_letter(item, "unprocessable", detail)
        return Finished.FAILED

    async def _dead_letter(self, item: WorkItem, reason: RejectionReason, detail: str) -> None:
        """Refuse ``item`` on the dead-letter topic with its original record position
        (requests admitted before migration 0008 have none, and get a log line only)."""
        if item.record_topic is None:
            return
        assert item.record_partition is not None
        assert item.record_offset is not None
        origin = Origin(
            item.record_topic,
            item.record_partition,
            item.record_offset,
            key=item.repository_path.encode(),
        )
        await self._dead_letters.send_later(origin, reason, detail, item.causation_id)

    async def _handle(self, conn: Connection, items: list[WorkItem]) -> list[Outcome]:
        """Each request's outcome. The repositories to collect (sweeps, and expiries
        still valid and due) are collected together, in one context, and the engine
        says how each of those requests ended; purges run one by one. Each request
        names a different repository."""
        settled: dict[int, Outcome] = {}  # by repository: ended before the engine ran
        collect: list[Cause] = []
        for item in items:
            if item.event_type == "repo-sweep":
                collect.append(Cause(item.repository_id, item.causation_id))
            elif item.event_type in ("tag-expired", "legacy-tag-expired"):
                verdict = await self._check_expiry(conn, item)
                if isinstance(verdict, ExpiredTag):
                    collect.append(Cause(item.repository_id, item.causation_id, verdict))
                else:
                    settled[item.repository_id] = verdict
        # A stale expiry may be the redo of a run cut off midway (a crash, a lost claim)
        # after its tag went: what that run queued still waits. Collect it now; the
        # request stays stale.
        stale = {
            item.repository_id: item.causation_id
            for item in items
            if settled.get(item.repository_id) == Finished.STALE
        }
        if stale:  # most batches have none: no query for them
            for repository_id in await queue.with_candidates(conn, list(stale)):
                collect.append(Cause(repository_id, stale[repository_id]))
        collecting = {cause.repository_id for cause in collect}
        with _bound([item for item in items if item.repository_id in collecting]):
            collected = (await self._engine.collect_many(collect)).outcomes if collect else {}
        outcomes: list[Outcome] = []
        for item in items:
            if item.repository_id in settled:
                outcomes.append(settled[item.repository_id])
            elif item.event_type == "repo-deleted":
                with _bound([item]):
                    outcomes.append(await self._purge(item))
            else:
                outcomes.append(collected[item.repository_id])
        return outcomes

    async def _check_expiry(self, conn: Connection, item: WorkItem) -> Outcome | ExpiredTag:
        """Why a tag-expired request removes nothing, or its tag when it is due."""
        tag = await queue.expiring_tag(conn, item, self._clock.now_ms())
        if tag is None:
            return Finished.STALE  # collected, deleted, restored or re-expired since
        if tag.immutable:
            return Finished.IMMUTABLE
        if not tag.due:
            return Deferred(tag.due_at_ms, "inside the time-machine window")
        return item.expired_tag

    async def _purge(self, item: WorkItem) -> Outcome:
        """The engine's outcome of the purge, or why it purged nothing."""
        try:
            report = await self._engine.purge(item.repository_id, causation_id=item.causation_id)
        except RepositoryNotFound:
            return Finished.GONE  # purged already
        except RepositoryNotMarked:
            # Marked when admitted, live now: refused like a forged purge (CONTRACT §2.1).
            detail = (
                f"repository {item.repository_path} is no longer marked for deletion (it was"
                " when the request was admitted); refusing to purge it"
            )
            log.warning("purge_refused", reason=detail)
            await self._dead_letter(item, "repository-not-marked", detail)
            return Finished.NOT_MARKED
        return report.outcomes[item.repository_id]


def _bound(items: Sequence[WorkItem]) -> contextlib.AbstractContextManager[None]:
    """Bind the claimed requests some work is for to every line logged meanwhile (in
    this task and the tasks it starts): of one request, its event id, causation id (the
    id its removal events and dead letter carry), repository and type; of several,
    their causation ids."""
    if len(items) == 1:
        [item] = items
        return structlog.contextvars.bound_contextvars(
            event_id=item.event_id,
            causation_id=item.causation_id,
            repository=item.repository_path,
            type=item.event_type,
        )
    return bound_causes(item.causation_id for item in items)
