"""The engine: repository contexts driven to a fixpoint.

A collection runs in three phases, for the repositories of some requests
(``collect_many``, which says how each request ended), for one repository
marked for deletion (``purge``) or for the whole registry at once
(``collect_all``, whose batches span repositories):

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
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol, TypeVar

import structlog

from collector.backoff import Backoff
from collector.clock import Clock, SystemClock, ms_to_datetime
from collector.db.connector import Connection, Database, translated
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
    Purge,
    Report,
    Repositories,
    Scope,
    StepResult,
    SweepTotals,
    WholeRegistry,
)
from collector.engine.images import ImageCollector
from collector.engine.labels import LabelCollector
from collector.engine.manifests import ManifestCollector
from collector.engine.outcomes import Cause, Deferred, ExpiredTag, Finished
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
#: A request whose tag or repository the engine could not finish (rows locked by a
#: push right then) is looked at again this much later.
_RETRY_MS = 2_000

RootsBatch = Callable[..., Awaitable[StepResult]]
#: What a collection starts from (a purge: all of them, whatever their state).
_ROOTS: tuple[RootsBatch, ...] = (
    tags.collect_batch,
    legacy_tags.collect_batch,
    uploads.collect_batch,
)


class CandidateCollector(Protocol):
    kind: str

    async def collect(self, conn: Connection, batch: Batch, now_ms: int) -> list[Removed]: ...


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
        return await self.collect_many([Cause(repository_id, causation_id)], orphans=orphans)

    async def collect_many(self, causes: Sequence[Cause], *, orphans: bool = False) -> Report:
        """Collect what is due in several repositories, each for its own request (one
        cause per repository), in one collection whose batches span them: a worker's
        requests of different repositories, together.

        The report says how each request ended: ``collected``, or, for one whose tag
        was not removed (a push held it locked), deferred to a little later.
        """
        scope = Repositories.of({cause.repository_id: cause.causation_id for cause in causes})
        report = Report(repositories=len(scope.causes))
        awaited = {cause.tag for cause in causes if cause.tag is not None}

        def count(removed: Removed) -> None:
            report.add(removed)
            if (tag := ExpiredTag.removed_by(removed.removal)) is not None:
                awaited.discard(tag)

        log.info("collection_started", repositories=scope.ids)
        await _all_or_none(*(self._drain(count, self._roots(scope, roots)) for roots in _ROOTS))
        if orphans:
            await self._sweep(scope, report)
        await self._fixpoint(scope, report)
        log.info("collection_finished", repositories=scope.ids, removed=report.total)
        for cause in causes:
            report.outcomes[cause.repository_id] = (
                self._later("the tag was locked") if cause.tag in awaited else Finished.COLLECTED
            )
        return report

    async def purge(self, repository_id: int, *, causation_id: str) -> Report:
        """Remove everything in a repository marked for deletion, then the repository.

        Raises :class:`RepositoryNotMarked` (before changing anything) for a
        repository that is not marked, and stops the same way if it gets
        unmarked midway: every purge transaction re-checks the mark;
        :class:`RepositoryNotFound` for one that does not exist (purged already).
        The report says how the request ended: ``purged``, or, when rows locked
        by pushes kept the repository from going, deferred to a little later.
        """
        purge = Purge(repository_id, causation_id)
        report = Report(repositories=1)
        await self._purge_roots(purge, report)
        # Tags are gone now, so each manifest decides on lists and subjects alone.
        await self._fixpoint(purge, report)
        finished = await self._finish_purge(purge, report)
        report.outcomes[repository_id] = (
            Finished.PURGED if finished else self._later("rows were locked")
        )
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
        everywhere = WholeRegistry(causation_id)
        limit = asyncio.Semaphore(concurrency)
        purging: list[Purge] = []

        async def purge_roots(repository_id: int) -> None:
            purge = Purge(repository_id, causation_id)
            async with limit:
                try:
                    await self._purge_roots(purge, report)
                except (RepositoryNotMarked, RepositoryNotFound) as exc:
                    log.warning("purge_skipped", repository_id=repository_id, reason=str(exc))
                    return
            purging.append(purge)

        log.info("collection_started", repositories=report.repositories, purges=len(marked))
        async with asyncio.TaskGroup() as group:
            # Roots are locked SKIP LOCKED in id order: side by side, each drain takes
            # the next batch the others do not hold.
            for roots in _ROOTS:
                for _ in range(concurrency):
                    group.create_task(self._drain(report.add, self._roots(everywhere, roots)))
            for repository_id in marked:
                group.create_task(purge_roots(repository_id))
        if orphans:
            await self._sweep(everywhere, report)
        await self._fixpoint(everywhere, report, claimers=concurrency)
        for purge in sorted(purging, key=lambda purge: purge.repository_id):
            await self._finish_purge(purge, report)
        log.info("collection_finished", removed=report.total)
        return report

    async def sweep_orphans(self, *, causation_id: str, concurrency: int = 4) -> Report:
        """Sweep the whole registry for objects nothing references (older than the
        grace period), and collect them with everything they free."""
        everywhere = WholeRegistry(causation_id)
        report = Report()
        await self._sweep(everywhere, report)
        await self._fixpoint(everywhere, report, claimers=concurrency)
        log.info("collection_finished", removed=report.total)
        return report

    # -- phases ------------------------------------------------------------

    async def _sweep(self, scope: Repositories | WholeRegistry, report: Report) -> None:
        """Queue the orphans in scope as candidates (see ``sweep.py``): the whole
        registry, table by table and range by range, or the repositories' own."""
        started = time.monotonic()
        judgement = sweep.Judgement.at(
            ms_to_datetime(self._clock.now_ms()),
            grace_s=self._config.orphan_grace_s,
            protected_digests=list(self._config.protected_digests),
        )
        totals = SweepTotals()
        repositories: list[int] | None = None  # for the log: None for every one
        match scope:
            case WholeRegistry(causation_id):
                for kind in sweep.KINDS:
                    work = functools.partial(
                        sweep.step,
                        kind=kind,
                        judgement=judgement,
                        span=self._config.orphan_sweep_span,
                        causation_id=causation_id,
                    )
                    table = SweepTotals()
                    while not (step := await self._retrying(work)).done:
                        table.scanned += step.scanned
                        table.queued += step.queued
                    log.info(
                        "sweep_table_finished",
                        kind=kind,
                        scanned=table.scanned,
                        queued=table.queued,
                    )
                    totals.merge(table)
            case Repositories(causes):
                repositories = scope.ids
                step = await self._retrying(
                    functools.partial(sweep.queue_in, causes=dict(causes), judgement=judgement)
                )
                totals.scanned, totals.queued = step.scanned, step.queued
        totals.seconds = time.monotonic() - started
        report.sweep.merge(totals)
        log.info(
            "sweep_finished",
            repositories=repositories,
            scanned=totals.scanned,
            queued=totals.queued,
            rows_per_s=round(totals.rows_per_s),
        )

    async def _purge_roots(self, purge: Purge, report: Report) -> None:
        """Queue everything in the repository and remove its tags, uploads and app tags."""
        log.info(
            "purge_started", repository_id=purge.repository_id, causation_id=purge.causation_id
        )
        # One transaction queues everything and takes the first batch of each kind of
        # root: a small repository needs no other (one guard, one commit).
        first = await self._run(self._guarded(purge, self._purge_batch(purge, seed=True)))
        for removed in first.removed:
            report.add(removed)
        if first.progress and first.more:
            await self._drain(report.add, self._guarded(purge, self._purge_batch(purge)))

    async def _finish_purge(self, purge: Purge, report: Report) -> bool:
        """Remove the repository once nothing is left in it; whether it went."""
        finished = await self._run(self._guarded(purge, self._delete_repository(purge)))
        if not finished.removed:
            report.incomplete.append(purge.repository_id)
            log.warning("purge_incomplete", repository_id=purge.repository_id)
            return False
        report.add(finished.removed[0])
        log.info("purge_finished", repository_id=purge.repository_id)
        return True

    async def _fixpoint(self, scope: Scope, report: Report, claimers: int = 1) -> None:
        """Rounds of the collectors with candidates waiting, up to ``claimers`` claims
        each (as many as the waiting candidates fill batches), until none waits or a
        round makes no progress (what waits is locked elsewhere).

        The claims of one kind in a round take disjoint shares of the object ids, so
        an object queued several times (a blob many manifests freed) is never locked
        by two of them, one waiting for the other's whole transaction."""
        batch_size = self._config.batch_size
        rounds = 0
        while True:
            waiting = await self._retrying(
                lambda conn: candidates.pending(conn, scope, claimers * batch_size)
            )
            if not waiting:
                break
            rounds += 1
            shares = {
                kind: min(claimers, -(-count // batch_size)) for kind, count in waiting.items()
            }
            results = await _all_or_none(
                *(
                    self._run(self._decide(scope, collector, shares[collector.kind], share))
                    for collector in self._collectors
                    if collector.kind in shares
                    for share in range(shares[collector.kind])
                )
            )
            for result in results:
                for removed in result.removed:
                    report.add(removed)
            if not any(result.progress for result in results):
                break
        log.debug("fixpoint_reached", scope=scope, rounds=rounds)

    async def _drain(self, count: Callable[[Removed], None], step: Step) -> None:
        """Run ``step`` in fresh transactions until it makes no progress or takes less
        than a full batch; ``count`` each removal once committed."""
        while True:
            result = await self._run(step)
            for removed in result.removed:
                count(removed)
            if not result.progress or not result.more:
                return

    def _later(self, why: str) -> Deferred:
        """A request to look at again shortly: rows it needs were locked right now."""
        return Deferred(self._clock.now_ms() + _RETRY_MS, why)

    # -- steps: each runs inside one transaction ---------------------------

    def _roots(self, scope: Scope, collect_batch: RootsBatch) -> Step:
        async def step(conn: Connection) -> StepResult:
            return await collect_batch(
                conn, scope, now_ms=self._clock.now_ms(), limit=self._config.batch_size
            )

        return step

    def _decide(
        self, scope: Scope, collector: CandidateCollector, shares: int = 1, share: int = 0
    ) -> Step:
        async def step(conn: Connection) -> StepResult:
            batch = await candidates.claim(
                conn, scope, collector.kind, self._config.batch_size, shares=shares, share=share
            )
            if not batch:
                return StepResult(progress=0)
            removed = await collector.collect(conn, batch, self._clock.now_ms())
            return StepResult(progress=len(batch), removed=removed)

        return step

    def _purge_batch(self, purge: Purge, *, seed: bool = False) -> Step:
        """A batch of each kind of root of the repository (tags of both models,
        uploads, application tags), after (``seed``) queueing all its manifests and
        legacy images."""
        roots = [self._roots(purge, collect_batch) for collect_batch in _ROOTS]
        roots.append(self._app_tags(purge))

        async def step(conn: Connection) -> StepResult:
            if seed:
                await manifests.queue_all(conn, purge)
                await images.queue_all(conn, purge)
            results = [await root(conn) for root in roots]
            return StepResult(
                progress=sum(result.progress for result in results),
                removed=[removed for result in results for removed in result.removed],
                more=any(result.more for result in results),
            )

        return step

    def _app_tags(self, purge: Purge) -> Step:
        async def step(conn: Connection) -> StepResult:
            count = await repositories.delete_app_tags(
                conn, purge.repository_id, self._config.batch_size
            )
            return StepResult(progress=count, more=count == self._config.batch_size)

        return step

    def _delete_repository(self, purge: Purge) -> Step:
        async def step(conn: Connection) -> StepResult:
            purged = await repositories.delete_if_empty(conn, purge.repository_id)
            if purged is None:
                return StepResult(progress=0)
            return StepResult(progress=1, removed=[Removed(purged, purge.causation_id)])

        return step

    def _guarded(self, purge: Purge, step: Step) -> Step:
        """``step``, run only while the repository is still marked for deletion."""

        async def guarded(conn: Connection) -> StepResult:
            marked = await repositories.is_marked(conn, purge.repository_id)
            if marked is None:
                raise RepositoryNotFound(f"repository {purge.repository_id} does not exist")
            if not marked:
                raise RepositoryNotMarked(
                    f"repository {purge.repository_id} is not marked for deletion;"
                    " refusing to purge"
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
                # Translated here too: the retry must not hang on every Database
                # implementation translating (a second translation is a no-op).
                with translated():
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
