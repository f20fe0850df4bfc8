"""`collector run`: the intake, the workers, the relay and the pruner, wired and watched.

Each stage has ``run()`` and ``stop()``. The service watches them all: if one
dies the others are stopped and its error surfaces (nothing is swallowed).
Shutdown order keeps every decision: stop the intake (its batches in flight
finish and their offsets are committed), let the workers finish the requests
in hand (abandoned after ``shutdown_timeout_s``, rolled back, redone next
time), then stop the relay (what it has not published stays in the outbox).
"""

from __future__ import annotations

import abc
import asyncio
import functools
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, ClassVar, Protocol

import asyncpg
import structlog

from collector import kafka, metrics
from collector.backoff import Outage, sleep_until
from collector.clock import Clock, SystemClock
from collector.config import Settings
from collector.db.connector import Connection, PoolDatabase, create_pool
from collector.dead_letters import DeadLetters
from collector.engine import Callbacks, Engine, EngineConfig, candidates
from collector.errors import CollectorError, StorageError
from collector.health import Health
from collector.intake.consumer import Intake
from collector.limits import service_pool_size
from collector.outbox import store as outbox
from collector.outbox.relay import Relay
from collector.work import queue
from collector.work.worker import Workers
from events import TYPE_PREFIX, BlobRemoved, Removal

log = structlog.get_logger(__name__)

#: How often the service looks whether it is idle.
_IDLE_CHECK_S = 0.25
#: How often old requests and published events are pruned.
_PRUNE_EVERY_S = 3600.0
#: How often the candidate backlog is counted for the metrics.
_BACKLOG_EVERY_S = 15.0


class Stage(Protocol):
    async def run(self) -> None: ...

    def stop(self) -> None: ...


@dataclass
class ServiceSummary:
    received: int = 0
    accepted: int = 0
    duplicates: int = 0
    refused: dict[str, int] = field(default_factory=dict)
    outcomes: dict[str, int] = field(default_factory=dict)
    published: int = 0
    #: Events set aside in gc.outbox: larger than the broker takes.
    undeliverable: int = 0
    seconds: float = 0.0


class Service:
    def __init__(
        self,
        settings: Settings,
        *,
        exit_when_idle_s: float | None = None,
        clock: Clock | None = None,
    ) -> None:
        self._settings = settings
        self._exit_when_idle_s = exit_when_idle_s
        self._clock = clock or SystemClock()
        self._stopping = asyncio.Event()
        self._shutting_down = asyncio.Event()
        #: What /readyz looks at, once there is something to look at.
        self._intake: Intake | None = None
        self._running: Callable[[], bool] | None = None

    def stop(self) -> None:
        """Ask for a clean shutdown (SIGTERM, SIGINT)."""
        self._stopping.set()

    async def run(self) -> ServiceSummary:
        settings = self._settings
        health = Health(asyncio.get_running_loop())
        for dependency in ("database", "broker"):
            health.require(dependency, functools.partial(Outage.available, dependency))
        # Not ready until the stages run: the pool, the topics and the group come first.
        health.require("consumer", lambda: self._intake is not None and self._intake.in_group)
        health.require("stages", lambda: self._running is not None and self._running())
        async with metrics.served(settings.metrics_address, settings.metrics_port, health):
            return await self._serve()

    async def _serve(self) -> ServiceSummary:
        started = time.monotonic()
        settings = self._settings
        # Per worker: its claim connection and the engine's concurrent collectors.
        pool = await create_pool(
            settings.database_url,
            max_size=service_pool_size(settings.repository_concurrency),
            wait_s=settings.connect_wait_s,
        )
        try:
            # A consumer subscribed to a missing topic would wait silently forever.
            await kafka.ensure_topics(settings, wait_s=settings.connect_wait_s)
            callbacks = Callbacks()
            callbacks.on(Removal, _count_removal)
            engine = Engine(
                PoolDatabase(pool),
                EngineConfig.from_settings(settings),
                clock=self._clock,
                callbacks=callbacks,
            )
            # One producer of dead letters for the intake and the workers; it stops
            # waiting out a broker outage once the service shuts down.
            dead_letters = DeadLetters(settings, self._shutting_down)
            workers = Workers(pool, engine, self._clock, settings, dead_letters)
            intake = Intake(
                settings,
                pool,
                clock=self._clock,
                on_admitted=workers.wake,
                dead_letters=dead_letters,
            )
            relay = Relay(pool, settings)
            pruner = Pruner(pool, timedelta(seconds=settings.retention_s))
            backlog = Backlog(pool)
            self._intake = intake
            try:
                await self._supervise(pool, intake, workers, relay, pruner, backlog)
            finally:
                await dead_letters.stop()
            return ServiceSummary(
                received=intake.received,
                accepted=intake.accepted,
                duplicates=intake.duplicates,
                refused=dict(dead_letters.sent),
                outcomes=dict(workers.outcomes),
                published=relay.published,
                undeliverable=relay.undeliverable,
                seconds=time.monotonic() - started,
            )
        finally:
            await pool.close()

    async def _supervise(
        self,
        pool: asyncpg.Pool[asyncpg.Record],
        intake: Intake,
        workers: Workers,
        relay: Relay,
        pruner: Pruner,
        backlog: Backlog,
    ) -> None:
        stages: dict[asyncio.Task[None], Stage] = {
            _start(stage.run(), name): stage
            for name, stage in (
                ("intake", intake),
                ("workers", workers),
                ("relay", relay),
                ("pruner", pruner),
                ("backlog", backlog),
            )
        }
        idle = _start(self._until_idle(pool, intake, workers), "idle-watch")
        stopping = _start(self._stopping.wait(), "signals")
        self._running = lambda: not any(task.done() for task in [*stages, stopping])
        errors: list[BaseException] = []
        try:
            done, _ = await asyncio.wait(
                [*stages, idle, stopping], return_when=asyncio.FIRST_COMPLETED
            )
            if idle in done and (idle_error := idle.exception()) is not None:
                errors.append(idle_error)
            for task in done:
                if task in stages:  # a stage ended on its own: that is a failure
                    error = task.exception() or CollectorError(f"{task.get_name()} stopped")
                    log.error("stage_failed", stage=task.get_name(), error=repr(error))
                    errors.append(error)
        finally:
            idle.cancel()
            stopping.cancel()
            errors += await self._shut_down(stages, intake, workers, relay, pruner, backlog)
        if errors:
            if isinstance(errors[0], CollectorError):
                raise errors[0]
            raise CollectorError(f"the service failed: {errors[0]!r}") from errors[0]

    async def _shut_down(
        self,
        stages: dict[asyncio.Task[None], Stage],
        intake: Intake,
        workers: Workers,
        relay: Relay,
        pruner: Pruner,
        backlog: Backlog,
    ) -> list[BaseException]:
        """Stop the stages in order; return the errors they ended with."""
        log.info("service_stopping")
        self._shutting_down.set()
        by_stage = {stage: task for task, stage in stages.items()}
        timeout = self._settings.shutdown_timeout_s
        errors = []
        order = ((intake, timeout), (workers, timeout), (relay, timeout), (pruner, 1), (backlog, 1))
        for stage, wait_s in order:
            stage.stop()
            if (error := await _finish(by_stage[stage], wait_s)) is not None:
                errors.append(error)
        log.info("service_stopped")
        return errors

    async def _until_idle(
        self, pool: asyncpg.Pool[asyncpg.Record], intake: Intake, workers: Workers
    ) -> None:
        """Return once nothing happened for ``exit_when_idle_s``: the topic read to its
        end, no request due or in hand, the outbox empty. Never, without the option."""
        if self._exit_when_idle_s is None:
            await asyncio.Event().wait()
            return
        idle_since: float | None = None
        while True:
            await asyncio.sleep(_IDLE_CHECK_S)
            if await self._is_idle(pool, intake, workers):
                now = time.monotonic()
                idle_since = idle_since or now
                if now - idle_since >= self._exit_when_idle_s:
                    log.info("service_idle", seconds=self._exit_when_idle_s)
                    return
            else:
                idle_since = None

    async def _is_idle(
        self, pool: asyncpg.Pool[asyncpg.Record], intake: Intake, workers: Workers
    ) -> bool:
        try:
            if workers.busy or not await intake.idle():
                return False
        except CollectorError:  # a partition went in a rebalance while we looked
            return False
        try:
            async with PoolDatabase(pool).connection() as conn:
                due = await queue.count_due(conn, self._clock.now_ms())
                return due == 0 and await outbox.pending(conn) == 0
        except StorageError:
            return False


class Periodic(abc.ABC):
    """A housekeeping stage: :meth:`round` on a pooled connection every ``every_s`` until
    stopped. A round the database fails is logged as ``<name>_failed``; the next one
    tries again."""

    name: ClassVar[str]
    every_s: ClassVar[float]

    def __init__(self, pool: asyncpg.Pool[asyncpg.Record]) -> None:
        self._database = PoolDatabase(pool)
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        while not self._stopping.is_set():
            try:
                async with self._database.connection() as conn:
                    await self.round(conn)
            except StorageError as exc:
                log.warning(f"{self.name}_failed", error=repr(exc))
            await sleep_until(self._stopping, self.every_s)

    @abc.abstractmethod
    async def round(self, conn: Connection) -> None:
        """One round of the housekeeping."""


class Pruner(Periodic):
    """Forgets finished requests and published events older than the retention."""

    name = "prune"
    every_s = _PRUNE_EVERY_S

    def __init__(self, pool: asyncpg.Pool[asyncpg.Record], retention: timedelta) -> None:
        super().__init__(pool)
        self._retention = retention

    async def round(self, conn: Connection) -> None:
        requests = await queue.prune(conn, self._retention)
        events = await outbox.prune(conn, self._retention)
        if requests or events:
            log.info("pruned", requests=requests, events=events)


class Backlog(Periodic):
    """Counts what waits, for the metrics: the candidates the engine queued and has not
    decided (a collection cut short leaves some), and the events not published yet
    (in every process: the publishing relay cannot count them while the broker is away,
    and with no relay publishing none does)."""

    name = "backlog"
    every_s = _BACKLOG_EVERY_S

    async def round(self, conn: Connection) -> None:
        for kind, (count, oldest_s) in (await candidates.backlog(conn)).items():
            metrics.CANDIDATES.labels(kind).set(count)
            metrics.CANDIDATE_OLDEST_AGE.labels(kind).set(oldest_s)
        metrics.OUTBOX_PENDING.set(await outbox.pending(conn))
        metrics.OUTBOX_OLDEST_AGE.set(await outbox.oldest_pending_age(conn))


async def _count_removal(removal: Removal, causation_id: str) -> None:
    # Short type names, as every metric's `type` label has them (tag-expired, tag-removed).
    kind = removal.event_type.removeprefix(TYPE_PREFIX)
    metrics.REMOVALS.labels(kind).inc()
    if isinstance(removal, BlobRemoved):  # a registry row may hold any size: never < 0
        metrics.REMOVED_BYTES.labels(kind).inc(max(removal.size, 0))


def _start(coroutine: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
    return asyncio.create_task(coroutine, name=name)


async def _finish(task: asyncio.Task[None], wait_s: float) -> BaseException | None:
    """Wait for a stopping stage, cancelled after ``wait_s``; return the error it raised."""
    if not task.done():
        _, late = await asyncio.wait([task], timeout=wait_s)
        if late:
            log.warning("stage_abandoned", stage=task.get_name(), after_s=wait_s)
            task.cancel()
    (outcome,) = await asyncio.gather(task, return_exceptions=True)
    if isinstance(outcome, BaseException) and not isinstance(outcome, asyncio.CancelledError):
        return outcome
    return None
