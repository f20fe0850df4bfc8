"""What the registry commands do (`migrate`, `collect`, `verify`, `demo`); their flags
are declared in :mod:`collector.cli.registry`, which imports this module only when a
command runs, so that `collector --help` starts fast."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import tempfile
from pathlib import Path

import asyncpg
import structlog
import typer
from rich.console import Console
from rich.table import Table

from collector import kafka
from collector.backoff import transient
from collector.cli import _signals as signals
from collector.cli._options import DEMO_LOG_LEVEL
from collector.cli._output import json_line, tables
from collector.cli._settings import configured
from collector.clock import SystemClock
from collector.config import Settings
from collector.db.connector import (
    Database,
    PoolDatabase,
    RollbackDatabase,
    create_pool,
)
from collector.db.migrations import migrate as apply_migrations
from collector.demo.run import print_summary, run_demo
from collector.demo.seed import Shape
from collector.engine import Callbacks, Engine, EngineConfig, Report
from collector.engine import repositories as repository_rows
from collector.errors import ConfigError, RepositoryNotFound, RepositoryNotMarked, StorageError
from collector.limits import engine_pool_size
from collector.outbox import relay, store
from collector.outbox.store import Removed
from collector.verify import Verification
from collector.verify import verify as verify_registry
from events import Removal, command_causation_id

log = structlog.get_logger(__name__)
#: How long an interrupted collect may take to count what it committed.
_COUNT_TIMEOUT_S = 5.0
#: Publishing waits at least this long for a broker (COLLECTOR_CONNECT_WAIT_S may be 0).
_MIN_STALL_S = 1.0


def migrate(
    *,
    database_url: str | None,
    kafka_bootstrap: str | None,
    skip_topics: bool,
    as_json: bool,
    log_level: str | None,
) -> None:
    settings = configured(
        log_level=log_level, database_url=database_url, kafka_bootstrap=kafka_bootstrap
    )

    async def main() -> tuple[list[str], list[str] | None]:
        pool = await create_pool(
            settings.database_url, max_size=1, wait_s=settings.connect_wait_s, migrated=False
        )
        try:
            async with PoolDatabase(pool).connection() as conn:
                applied = [migration.name for migration in await apply_migrations(conn)]
        finally:
            await pool.close()
        if skip_topics:
            return applied, None
        return applied, await kafka.ensure_topics(settings, wait_s=settings.connect_wait_s)

    applied, created = asyncio.run(main())
    if as_json:
        json_line({"summary": {"migrations_applied": applied, "topics_created": created}})
        return
    typer.echo(
        f"database: {len(applied)} migration(s) applied" if applied else "database: up to date"
    )
    if created is not None:
        typer.echo(f"topics: created {', '.join(created)}" if created else "topics: up to date")


def collect(
    repositories: list[str],
    *,
    all_repositories: bool,
    purge: bool,
    orphans: bool,
    dry_run: bool,
    summary: bool,
    publish: bool,
    as_json: bool,
    database_url: str | None,
    kafka_bootstrap: str | None,
    batch_size: int | None,
    concurrency: int | None,
    log_level: str | None,
) -> None:
    if bool(repositories) == all_repositories:
        raise ConfigError("name repositories or give --all (not both)")
    if summary:
        _plan_instead(repositories, purge, orphans, dry_run, as_json, database_url, log_level)
        return
    settings = configured(
        log_level=log_level,
        database_url=database_url,
        kafka_bootstrap=kafka_bootstrap,
        batch_size=batch_size,
        repository_concurrency=concurrency,
    )
    causation_id = command_causation_id("collect")
    structlog.contextvars.bind_contextvars(causation_id=causation_id)
    run = _Collection(
        settings, causation_id, dry_run=dry_run, publish=publish and not dry_run, as_json=as_json
    )
    try:
        report = signals.run(run.collect(repositories or [], purge=purge, orphans=orphans))
    except signals.Interrupted as exc:
        raise signals.Interrupted(exc.signum, run.interrupted(exc.signal_name)) from None
    run.print_summary(report)
    if run.skipped:
        typer.echo(f"collect: not collected: {', '.join(run.skipped)}", err=True)
        raise typer.Exit(1)


def _plan_instead(
    repositories: list[str],
    purge: bool,
    orphans: bool,
    dry_run: bool,
    as_json: bool,
    database_url: str | None,
    log_level: str | None,
) -> None:
    """`collect --dry-run --summary`: the plan of what the collection would remove."""
    from collector.cli import _plan

    if not dry_run:
        raise ConfigError("--summary goes with --dry-run (a collection prints its own summary)")
    if orphans:
        raise ConfigError("--summary does not plan the orphan sweep: drop --orphans")
    _plan.run(
        repositories,
        namespace=None,
        horizon_s=0,
        top=10,
        as_json=as_json,
        database_url=database_url,
        log_level=log_level,
        purge=purge,
        purge_named=purge,
    )


class _Collection:
    """One `collect`: the engine over the chosen repositories, each removal printed as
    it commits, then the outbox published (or counted), and the summary."""

    def __init__(
        self,
        settings: Settings,
        causation_id: str,
        *,
        dry_run: bool,
        publish: bool,
        as_json: bool,
    ) -> None:
        self.settings = settings
        self.causation_id = causation_id
        self.dry_run = dry_run
        self.publish = publish
        self.as_json = as_json
        #: What committed so far, as it committed (the report arrives only at the end).
        self.progress = Report()
        #: Repositories (or passes) that failed for a reason waiting will not change.
        self.skipped: list[str] = []
        self.drained: relay.Drained | None = None
        #: Events still in the outbox when collect ended.
        self.waiting = 0
        #: Removals committed before a signal stopped the run, as the outbox counts them.
        self.committed: int | None = None
        #: The newest outbox id before the run: its events come after.
        self.outbox_before = 0
        #: Whether the engine finished (what a signal then interrupts is the publishing).
        self.collected = False
        #: How long publishing waits for any event to leave the outbox.
        self.stall_s = max(settings.connect_wait_s, _MIN_STALL_S)

    async def _show(self, removal: Removal, cause: str) -> None:
        self.progress.add(Removed(removal, cause))
        kind = removal.event_type.removeprefix("registry.gc.")
        if self.as_json:
            verb = "would-remove" if self.dry_run else "removed"
            json_line(
                {verb: kind, "subject": removal.subject, "data": removal.model_dump(mode="json")}
            )
        else:  # one plain line per removal, never wrapped: scripts read these
            verb = "would remove" if self.dry_run else "removed"
            typer.echo(f"{verb} {kind} {removal.subject}")

    async def collect(self, paths: list[str], *, purge: bool, orphans: bool) -> Report:
        settings = self.settings
        callbacks = Callbacks()
        callbacks.on(Removal, self._show)
        config = EngineConfig.from_settings(settings)
        pool = await create_pool(
            settings.database_url,
            max_size=engine_pool_size(settings.repository_concurrency),
            wait_s=settings.connect_wait_s,
        )
        try:
            async with PoolDatabase(pool).connection() as conn:
                targets = [await repository_rows.find(conn, path) for path in paths]
                self.outbox_before = await store.last_id(conn)
            if purge:
                repository_rows.require_marked(targets)

            async def run(db: Database) -> Report:
                engine = Engine(db, config, callbacks=callbacks)
                if targets:
                    work = [(repo.id, repo.path, purge) for repo in targets]
                    return await self._one_by_one(engine, work, orphans, named=True)
                try:
                    return await engine.collect_all(
                        causation_id=self.causation_id,
                        purge_marked=purge,
                        orphans=orphans,
                        concurrency=settings.repository_concurrency,
                    )
                except Exception as exc:
                    if transient(exc):
                        raise
                    # Something in the registry fails the registry-wide pass: find what.
                    # The run fails whatever the search finds (the orphan sweep's
                    # registry-wide part, say, is not redone repository by repository).
                    self.skipped.append("the registry-wide pass")
                    typer.echo(
                        f"collect: the registry-wide collection failed ({exc!r});"
                        " collecting repository by repository",
                        err=True,
                    )
                async with PoolDatabase(pool).connection() as conn:
                    due = await repository_rows.with_due_work(conn, SystemClock().now_ms())
                    marked = await repository_rows.marked(conn) if purge else []
                work = [(r, f"repository {r}", False) for r in due if r not in marked]
                work += [(r, f"repository {r}", True) for r in marked]
                return await self._one_by_one(engine, work, orphans, named=False)

            if self.dry_run:
                async with RollbackDatabase.session(pool) as db:
                    return await run(db)
            try:
                report = await run(PoolDatabase(pool))
            except asyncio.CancelledError:
                await self._count_committed(pool)
                raise
            self.collected = True
            if self.publish:
                self.drained = await relay.drain(pool, settings, stall_s=self.stall_s)
                self.waiting = self.drained.waiting
            else:
                async with PoolDatabase(pool).connection() as conn:
                    self.waiting = await store.pending(conn)
            return report
        finally:
            await pool.close()

    async def _one_by_one(
        self, engine: Engine, work: list[tuple[int, str, bool]], orphans: bool, *, named: bool
    ) -> Report:
        """Collect (or, where asked, purge) each repository of ``work`` (id, name, purge)
        on its own. One that fails for a reason waiting will not change is named on
        stderr and skipped; the others go on. A purge whose repository was unmarked or
        purged meanwhile is the user's error if ``named``, else skipped as collect_all
        does."""
        report = Report()
        for repository_id, name, purge in work:
            try:
                if purge:
                    report.merge(await engine.purge(repository_id, causation_id=self.causation_id))
                else:
                    report.merge(
                        await engine.collect(
                            repository_id, causation_id=self.causation_id, orphans=orphans
                        )
                    )
            except (RepositoryNotMarked, RepositoryNotFound) as exc:
                if named:
                    raise
                log.warning("purge_skipped", repository_id=repository_id, reason=str(exc))
            except Exception as exc:
                if transient(exc):
                    raise
                self.skipped.append(name)
                typer.echo(f"collect: {name} skipped, it cannot be collected: {exc!r}", err=True)
        return report

    async def _count_committed(self, pool: asyncpg.Pool[asyncpg.Record]) -> None:
        """Count what this run committed from the outbox: a transaction the signal cut
        short in its COMMIT may have committed without the engine hearing of it."""

        async def count() -> int:
            async with PoolDatabase(pool).connection() as conn:
                return await store.caused_by(conn, self.causation_id, after=self.outbox_before)

        try:
            self.committed = await asyncio.wait_for(count(), _COUNT_TIMEOUT_S)
        except (StorageError, TimeoutError) as exc:
            log.warning("committed_count_failed", error=repr(exc))

    def interrupted(self, signal_name: str) -> str:
        """The one line an interrupted collect ends with: what was done, what is left."""
        if self.dry_run:
            return f"collect interrupted by {signal_name}: a dry run, nothing was changed"
        if self.collected:
            return (
                f"collect interrupted by {signal_name} while publishing: the collection is"
                " complete; events not yet published wait in gc.outbox for `collector run`"
            )
        committed = (
            f"{self.committed:,}" if self.committed is not None else f"{self.progress.total:,}+"
        )
        return (
            f"collect interrupted by {signal_name}: {committed} removal(s) committed, their"
            " events in gc.outbox; the rest is still due and the same command finishes it"
        )

    def print_summary(self, report: Report) -> None:
        published = self.drained.published if self.drained else 0
        if self.as_json:
            json_line(
                {
                    "summary": {
                        "dry_run": self.dry_run,
                        "removed": dict(sorted(report.removed.items())),
                        "total": report.total,
                        "bytes_freed": report.bytes_freed,
                        "incomplete_purges": report.incomplete,
                        "orphans_queued": report.sweep.queued,
                        "events_published": published,
                        "events_waiting": self.waiting,
                        "skipped": self.skipped,
                    }
                }
            )
        else:
            _print_report(report, dry_run=self.dry_run)
        if published:
            typer.echo(
                f"collect: {published:,} removal event(s) published to"
                f" {self.settings.topic_removals}",
                err=True,
            )
        if self.drained and self.drained.set_aside:
            typer.echo(
                f"collect: {self.drained.set_aside:,} event(s) larger than the broker takes"
                " were set aside in gc.outbox (column undeliverable)",
                err=True,
            )
        if self.waiting:
            # Without a relay, the blob deleter never hears of them.
            why = (
                "--no-publish"
                if not self.publish
                else f"none left for {self.stall_s:g} s: is the broker at"
                f" {self.settings.kafka_bootstrap} reachable?"
            )
            typer.echo(
                f"collect: {self.waiting:,} removal event(s) wait in gc.outbox ({why});"
                " a running `collector run` publishes them to the removals topic",
                err=True,
            )


def _print_report(report: Report, *, dry_run: bool) -> None:
    console = tables()
    title = "summary (dry run: nothing was changed)" if dry_run else "summary"
    table = Table(title=title, title_justify="left")
    table.add_column("kind")
    table.add_column("count", justify="right")
    for event_type, count in sorted(report.removed.items()):
        table.add_row(event_type.removeprefix("registry.gc."), str(count))
    table.add_row("bytes freed", f"{report.bytes_freed:,}", style="bold")
    console.print(table)
    if report.sweep.scanned:
        console.print(
            f"orphan sweep: {report.sweep.scanned:,} rows judged in {report.sweep.seconds:.2f} s"
            f" ({report.sweep.rows_per_s:,.0f} rows/s), {report.sweep.queued:,} orphans queued"
        )
    for repository_id in report.incomplete:
        console.print(
            f"[yellow]purge incomplete[/] repository {repository_id}: "
            "rows were added meanwhile; run again"
        )


def verify(*, database_url: str | None, as_json: bool, log_level: str | None) -> None:
    settings = configured(log_level=log_level, database_url=database_url)

    async def main() -> Verification:
        pool = await create_pool(settings.database_url, max_size=1, wait_s=settings.connect_wait_s)
        try:
            async with PoolDatabase(pool).connection() as conn:
                return await verify_registry(
                    conn,
                    now_ms=SystemClock().now_ms(),
                    protected_digests=settings.protected_digests,
                    orphan_grace_s=settings.orphan_grace_s,
                )
        finally:
            await pool.close()

    result = asyncio.run(main())
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "ok": result.ok,
                    "dangling": [vars(f) for f in result.dangling],
                    "garbage": [vars(f) for f in result.garbage],
                    "queued": [vars(f) for f in result.queued],
                    "grace": [vars(f) for f in result.grace],
                }
            )
        )
    else:
        _print_verification(result)
    raise typer.Exit(0 if result.ok else 1)


def demo(
    *,
    repositories: int,
    seed: int,
    storage_root: Path | None,
    database_url: str | None,
    kafka_bootstrap: str | None,
    as_json: bool,
    log_level: str | None,
) -> None:
    settings = configured(
        default_log_level=DEMO_LOG_LEVEL,
        log_level=log_level,
        database_url=database_url,
        kafka_bootstrap=kafka_bootstrap,
    )
    # With --json the progress goes to stderr, and stdout holds the summary alone.
    console = Console(highlight=False, stderr=as_json)
    with contextlib.ExitStack() as stack:
        if storage_root is None:
            storage_root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="gc-demo-")))
        storage_root.mkdir(parents=True, exist_ok=True)
        result = asyncio.run(
            run_demo(
                settings,
                Shape(repositories=repositories),
                seed=seed,
                console=console,
                storage_root=storage_root,
            )
        )
    if as_json:
        json_line({"summary": {"ok": result.ok, **dataclasses.asdict(result)}})
    else:
        print_summary(result, console)
    raise typer.Exit(0 if result.ok else 1)


def _print_verification(result: Verification) -> None:
    console = tables()
    if result.dangling:
        table = Table(title="dangling references", title_justify="left", title_style="bold red")
        for column in ("reference", "rows", "sample ids"):
            table.add_column(column)
        for finding in result.dangling:
            table.add_row(finding.what, str(finding.rows), ", ".join(map(str, finding.sample)))
        console.print(table)
    else:
        console.print("integrity: ok, no dangling reference")
    sections = (
        (result.garbage, "garbage due: the next collection or orphan sweep removes it"),
        (result.queued, "queued: candidates and requests waiting for a run"),
        (result.grace, "unreferenced, inside the orphan grace period (COLLECTOR_ORPHAN_GRACE_S)"),
    )
    for findings, title in sections:
        if not findings:
            continue
        table = Table(title=title, title_justify="left")
        for column in ("kind", "rows", "sample ids"):
            table.add_column(column)
        for finding in findings:
            table.add_row(finding.what, str(finding.rows), ", ".join(map(str, finding.sample)))
        console.print(table)
    if not result.garbage:
        console.print("garbage: none due")
