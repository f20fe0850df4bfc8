"""The engine: repository contexts driven to a fixpoint.

A collection runs in three phases, for one repository (a request) or for
the whole registry at once (``collect_all``, whose batches span repositories):

1. roots: tags (OCI and pre-OCI, with their tag manifests) past their window
   and expired uploads (a purge: every tag, upload and application tag, and
   every manifest and legacy image is queued);
   with ``orphans``, the orphan sweep then queues what nothing references
   and no event announced (``sweep.py``);
2. fixpoint: rounds in which the manifest, label, image and blob collectors
   run concurrently, each in its own transaction, each claiming a batch of
   the context's candidates, deciding it with one set-based query and
   queueing what its deletions freed, until a round claims nothing;
3. a purge then removes the repository row if nothing is left in it.

Every transaction writes the removal events of its deletions to the outbox
before it commits. Deadlocks, serialization failures and lost connections
are retried with jittered backoff; the transaction is replayed from scratch,
which is safe because every decision is re-made from the database.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Protocol, TypeVar

import structlog

from collector.backoff import Backoff
from collector.clock import Clock, SystemClock, ms_to_datetime
from collector.db.connector import Connection, Database
from collector.engine import (
    candidates,
    images,
    legacy_tags,
    manifests,
    repositories,
    sweep,
    tags,
    uploads,
)
from collector.engine.blobs import BlobCollector
from collector.engine.callbacks import Callbacks
from collector.engine.candidates import Batch
from collector.engine.context import (
    EngineConfig,
    Mode,
    Report,
    RepositoryContext,
    StepResult,
    SweepTotals,
)
from collector.engine.images import ImageCollector
from collector.engine.labels import LabelCollector
from collector.engine.manifests import ManifestCollector
from collector.errors import (
    Conflict,
    Contention,
    DatabaseUnavailable,
    RepositoryNotFound,
    RepositoryNotMarked,
)
from collector.outbox import store as outbox
from collector.outbox.store import Removed

log = structlog.get_logger(__name__)
T = TypeVar("T")

_MAX_ATTEMPTS = 10

RootsBatch = Callable[..., Awaitable[StepResult]]
#: What a collection starts from (a purge: all of them, whatever their state).
_ROOTS: tuple[RootsBatch, ...] = (
    tags.collect_batch,
    legacy_tags.collect_batch,
    uploads.collect_batch,
)


class CandidateCollector(Protocol):
    kind: str

    async def collect(
        self, conn: Connection, ctx: RepositoryContext, batch: Batch, now_ms: int
    ) -> list[Removed]: ...


Step = Callable[[Connection], Awaitable[StepResult]]


class Engine:
    def __init__(
        self,
        db: Database,
        config: EngineConfig,
        *,
        clock: Clock | None = None,
        callbacks: Callbacks | None = None,
    ) -> None:
        self._db = db
        self._config = config
        self._clock = clock or SystemClock()
        self._callbacks = callbacks or Callbacks()
        self._collectors: list[CandidateCollector] = [
            ManifestCollector(),
            LabelCollector(),
            ImageCollector(config.chain_steps_per_transaction),
            BlobCollector(config.protected_digests),
        ]

    # -- public API --------------------------------------------------------

    async def collect(
        self, repository_id: int, *, causation_id: str, orphans: bool = False
    ) -> Report:
        """Collect what is due in one repository, and everything that frees; with
        ``orphans``, also its manifests and legacy images that nothing references."""
        return await self.collect_many({repository_id: causation_id}, orphans=orphans)

    async def collect_many(self, causes: Mapping[int, str], *, orphans: bool = False) -> Report:
        """Collect what is due in several repositories, each for its own request
        (``causes``: repository id -> causation id), in one context whose batches
        span them: a worker's requests of different repositories, together."""
        ctx = RepositoryContext.of_requests(causes)
        report = Report(repositories=len(causes))
        log.info("collection_started", repositories=ctx.repository_ids)
        await _all_or_none(
            *(self._drain(report, self._roots(ctx, roots)) for roots in _ROOTS),
        )
        if orphans:
            await self._sweep(ctx, report)
        await self._fixpoint(ctx, report)
        log.info("collection_finished", repositories=ctx.repository_ids, removed=report.total)
        return report

    async def purge(self, repository_id: int, *, causation_id: str) -> Report:
        """Remove everything in a repository marked for deletion, then the repository.

        Raises :class:`RepositoryNotMarked` (before changing anything) for a
        repository that is not marked, and stops the same way if it gets
        unmarked midway: every purge transaction re-checks the mark.
        """
        ctx = RepositoryContext(repository_id, causation_id, Mode.PURGE)
        report = Report(repositories=1)
        await self._purge_roots(ctx, report)
        # Tags are gone now, so each manifest decides on lists and subjects alone.
        await self._fixpoint(ctx, report)
        await self._finish_purge(ctx, report)
        return report

    async def collect_all(
        self,
        *,
        causation_id: str,
        purge_marked: bool = False,
        orphans: bool = False,
        concurrency: int = 4,
    ) -> Report:
        """Collect every repository with due work or pending candidates, (with
        ``purge_marked``) purge every repository marked for deletion and (with
        ``orphans``) sweep the registry for objects nothing references.

        One registry-wide context: roots are taken in batches across
        repositories and the fixpoint claims full batches of candidates
        whatever repository they belong to, ``concurrency`` claims per kind
        at a time; only purges keep per-repository steps (their guard and
        the final removal of the repository row).
        """

        async def work(conn: Connection) -> tuple[list[int], list[int]]:
            due = await repositories.with_due_work(conn, self._clock.now_ms())
            return due, await repositories.marked(conn) if purge_marked else []

        due, marked = await self._retrying(work)
        report = Report(repositories=len(set(due) | set(marked)))
        everywhere = RepositoryContext(None, causation_id, Mode.COLLECT)
        limit = asyncio.Semaphore(concurrency)
        purging: list[RepositoryContext] = []

        async def purge_roots(repository_id: int) -> None:
            ctx = RepositoryContext(repository_id, causation_id, Mode.PURGE)
            async with limit:
                try:
                    await self._purge_roots(ctx, report)
                except (RepositoryNotMarked, RepositoryNotFound) as exc:
                    log.warning("purge_skipped", repository_id=repository_id, reason=str(exc))
                    return
            purging.append(ctx)

        log.info("collection_started", repositories=report.repositories, purges=len(marked))
        async with asyncio.TaskGroup() as group:
            for roots in _ROOTS:
                group.create_task(self._drain(report, self._roots(everywhere, roots)))
            for repository_id in marked:
                group.create_task(purge_roots(repository_id))
        if orphans:
            await self._sweep(everywhere, report)
        await self._fixpoint(everywhere, report, claimers=concurrency)
        for ctx in sorted(purging, key=lambda ctx: ctx.repository):
            await self._finish_purge(ctx, report)
        log.info("collection_finished", removed=report.total)
        return report

    async def sweep_orphans(self, *, causation_id: str, concurrency: int = 4) -> Report:
        """Sweep the whole registry for objects nothing references (older than the
        grace period), and collect them with everything they free."""
        everywhere = RepositoryContext(None, causation_id, Mode.COLLECT)
        report = Report()
        await self._sweep(everywhere, report)
        await self._fixpoint(everywhere, report, claimers=concurrency)
        log.info("collection_finished", removed=report.total)
        return report

    # -- phases ------------------------------------------------------------

    async def _sweep(self, ctx: RepositoryContext, report: Report) -> None:
        """Queue the orphans in scope as candidates (see ``sweep.py``): the whole
        registry, table by table and range by range, or the repositories' own."""
        started = time.monotonic()
        judgement = sweep.Judgement.at(
            ms_to_datetime(self._clock.now_ms()),
            grace_s=self._config.orphan_grace_s,
            protected_digests=list(self._config.protected_digests),
        )
        totals = SweepTotals()
        if ctx.repository_ids is None:
            for kind in sweep.KINDS:
                work = functools.partial(
                    sweep.step,
                    kind=kind,
                    judgement=judgement,
                    span=self._config.orphan_sweep_span,
                    causation_id=ctx.causation_id,
                )
                table = SweepTotals()
                while not (step := await self._retrying(work)).done:
                    table.scanned += step.scanned
                    table.queued += step.queued
                log.info(
                    "sweep_table_finished", kind=kind, scanned=table.scanned, queued=table.queued
                )
                totals.merge(table)
        else:
            causes = dict(zip(ctx.repository_ids, ctx.causation_ids(), strict=True))
            step = await self._retrying(
                functools.partial(sweep.queue_in, causes=causes, judgement=judgement)
            )
            totals.scanned, totals.queued = step.scanned, step.queued
        totals.seconds = time.monotonic() - started
        report.sweep.merge(totals)
        log.info(
            "sweep_finished",
            repositories=ctx.repository_ids,
            scanned=totals.scanned,
            queued=totals.queued,
            rows_per_s=round(totals.rows_per_s),
        )

    async def _purge_roots(self, ctx: RepositoryContext, report: Report) -> None:
        """Queue everything in the repository and remove its tags, uploads and app tags."""
        log.info("purge_started", repository_id=ctx.repository_id, causation_id=ctx.causation_id)
        await self._run(self._guarded(ctx, self._seed_purge(ctx)))
        await _all_or_none(
            *(self._drain(report, self._guarded(ctx, self._roots(ctx, roots))) for roots in _ROOTS),
            self._drain(report, self._guarded(ctx, self._app_tags(ctx))),
        )

    async def _finish_purge(self, ctx: RepositoryContext, report: Report) -> None:
        finished = await self._run(self._guarded(ctx, self._delete_repository(ctx)))
        if finished.removed:
            report.add(finished.removed[0])
            log.info("purge_finished", repository_id=ctx.repository_id)
        else:
            report.incomplete.append(ctx.repository)
            log.warning("purge_incomplete", repository_id=ctx.repository_id)

    async def _fixpoint(self, ctx: RepositoryContext, report: Report, claimers: int = 1) -> None:
        """Rounds of the collectors with candidates waiting, ``claimers`` claims each,
        until none waits or a round claims nothing (what waits is locked elsewhere)."""
        rounds = 0
        while True:
            waiting = await self._retrying(
                lambda conn: candidates.pending_kinds(conn, ctx.repository_ids)
            )
            if not waiting:
                break
            rounds += 1
            results = await _all_or_none(
                *(
                    self._run(self._decide(ctx, collector))
                    for collector in self._collectors
                    if collector.kind in waiting
                    for _ in range(claimers)
                )
            )
            for result in results:
                for removed in result.removed:
                    report.add(removed)
            if not any(result.claimed for result in results):
                break
        log.debug("fixpoint_reached", repository_id=ctx.repository_id, rounds=rounds)

    async def _drain(self, report: Report, step: Step) -> None:
        """Run ``step`` in fresh transactions until it finds nothing to do."""
        while True:
            result = await self._run(step)
            for removed in result.removed:
                report.add(removed)
            if not result.claimed:
                return

    # -- steps: each runs inside one transaction ---------------------------

    def _roots(self, ctx: RepositoryContext, collect_batch: RootsBatch) -> Step:
        async def step(conn: Connection) -> StepResult:
            return await collect_batch(
                conn, ctx, now_ms=self._clock.now_ms(), limit=self._config.batch_size
            )

        return step

    def _decide(self, ctx: RepositoryContext, collector: CandidateCollector) -> Step:
        async def step(conn: Connection) -> StepResult:
            batch = await candidates.claim(
                conn, ctx.repository_ids, collector.kind, self._config.batch_size
            )
            if not batch:
                return StepResult(claimed=0)
            removed = await collector.collect(conn, ctx, batch, self._clock.now_ms())
            return StepResult(claimed=len(batch), removed=removed)

        return step

    def _seed_purge(self, ctx: RepositoryContext) -> Step:
        async def step(conn: Connection) -> StepResult:
            await manifests.queue_all(conn, ctx)
            await images.queue_all(conn, ctx)
            return StepResult(claimed=0)

        return step

    def _app_tags(self, ctx: RepositoryContext) -> Step:
        async def step(conn: Connection) -> StepResult:
            count = await repositories.delete_app_tags(
                conn, ctx.repository, self._config.batch_size
            )
            return StepResult(claimed=count)

        return step

    def _delete_repository(self, ctx: RepositoryContext) -> Step:
        async def step(conn: Connection) -> StepResult:
            purged = await repositories.delete_if_empty(conn, ctx.repository)
            if purged is None:
                return StepResult(claimed=0)
            return StepResult(claimed=1, removed=[Removed(purged, ctx.causation_id)])

        return step

    def _guarded(self, ctx: RepositoryContext, step: Step) -> Step:
        """``step``, run only while the repository is still marked for deletion."""

        async def guarded(conn: Connection) -> StepResult:
            marked = await repositories.is_marked(conn, ctx.repository)
            if marked is None:
                raise RepositoryNotFound(f"repository {ctx.repository_id} does not exist")
            if not marked:
                raise RepositoryNotMarked(
                    f"repository {ctx.repository_id} is not marked for deletion; refusing to purge"
                )
            return await step(conn)

        return guarded

    # -- transactions --------------------------------------------------------

    async def _run(self, step: Step) -> StepResult:
        """Run ``step`` in one transaction with its outbox rows; retry lost races.

        Callbacks run once the transaction has committed.
        """

        async def with_outbox(conn: Connection) -> StepResult:
            result = await step(conn)
            await outbox.write(conn, result.removed, ms_to_datetime(self._clock.now_ms()))
            return result

        result = await self._retrying(with_outbox)
        for removed in result.removed:
            await self._callbacks.dispatch(removed)
        return result

    async def _retrying(self, work: Callable[[Connection], Awaitable[T]]) -> T:
        """``work`` in a transaction, replayed from scratch after a lost race or a lost
        connection (every decision is re-made from the database)."""
        backoff = Backoff(first=0.05)
        for attempt in range(1, _MAX_ATTEMPTS + 1):
            try:
                async with self._db.transaction() as conn:
                    return await work(conn)
            except Conflict as exc:
                if attempt == _MAX_ATTEMPTS:
                    raise Contention(f"transaction kept conflicting: {exc.__cause__}") from exc
                log.info(
                    "transaction_retried", reason=type(exc.__cause__).__name__, attempt=attempt
                )
            except DatabaseUnavailable as exc:
                if attempt == _MAX_ATTEMPTS:
                    raise
                log.warning("database_lost", error=str(exc), attempt=attempt)
                backoff.at_least(0.5)
            await asyncio.sleep(backoff.next())
        raise AssertionError("unreachable: the last attempt returns or raises")


async def _all_or_none(*steps: Awaitable[T]) -> list[T]:
    """Run ``steps`` side by side; when one fails, cancel the others and wait for them
    before raising its error (gather alone leaves them running, unowned, while the
    caller may redo the same repository)."""
    tasks = [asyncio.ensure_future(step) for step in steps]
    try:
        return await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
