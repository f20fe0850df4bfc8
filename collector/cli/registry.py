"""Commands on the registry database: migrate, collect, verify, demo."""

from __future__ import annotations

import asyncio
import contextlib
import json
import tempfile
from pathlib import Path
from typing import Annotated

import structlog
import typer
from rich.console import Console
from rich.table import Table

from collector import kafka
from collector.cli._app import app
from collector.cli._options import BatchSize, Concurrency, DatabaseUrl, KafkaBootstrap, LogLevel
from collector.config import Settings, load_settings
from collector.db.connector import (
    Database,
    PoolDatabase,
    RollbackDatabase,
    create_pool,
    waiting_changes,
)
from collector.db.migrations import migrate as apply_migrations
from collector.demo.run import print_summary, run_demo
from collector.demo.seed import Shape
from collector.engine import Callbacks, Engine, EngineConfig, Report, SystemClock
from collector.engine import repositories as repository_rows
from collector.errors import ConfigError, RepositoryNotFound, RepositoryNotMarked
from collector.logging import configure_logging
from collector.outbox import store as outbox
from collector.verify import Verification
from collector.verify import verify as verify_registry
from events import Removal, command_causation_id

log = structlog.get_logger(__name__)


@app.command()
def migrate(
    database_url: DatabaseUrl = None,
    kafka_bootstrap: KafkaBootstrap = None,
    skip_topics: Annotated[
        bool, typer.Option("--skip-topics", help="Only the database; leave Kafka alone.")
    ] = False,
    log_level: LogLevel = "info",
) -> None:
    """Create or upgrade the registry schema, the gc schema and the topics. Idempotent."""
    configure_logging(log_level)
    settings = load_settings(database_url=database_url, kafka_bootstrap=kafka_bootstrap)

    async def main() -> None:
        pool = await create_pool(
            settings.database_url, max_size=1, wait_s=settings.connect_wait_s, migrated=False
        )
        try:
            async with pool.acquire() as conn:
                applied = await apply_migrations(conn)
        finally:
            await pool.close()
        typer.echo(
            f"database: {len(applied)} migration(s) applied" if applied else "database: up to date"
        )
        if not skip_topics:
            created = await kafka.ensure_topics(settings, wait_s=settings.connect_wait_s)
            typer.echo(f"topics: created {', '.join(created)}" if created else "topics: up to date")

    asyncio.run(main())


@app.command()
def collect(
    repositories: Annotated[
        list[str] | None, typer.Argument(metavar="[NAMESPACE/REPOSITORY]...", show_default=False)
    ] = None,
    all_repositories: Annotated[
        bool, typer.Option("--all", help="Every repository with due work.")
    ] = False,
    purge: Annotated[
        bool,
        typer.Option(help="Purge the named repositories (with --all: also every marked one)."),
    ] = False,
    orphans: Annotated[
        bool,
        typer.Option(
            "--orphans",
            help="Also sweep for objects nothing references and no event announced, older"
            " than COLLECTOR_ORPHAN_GRACE_S (named repositories: their manifests and legacy"
            " images; --all: every table).",
        ),
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print what would be removed; change nothing.")
    ] = False,
    database_url: DatabaseUrl = None,
    batch_size: BatchSize = None,
    concurrency: Concurrency = None,
    log_level: LogLevel = "info",
) -> None:
    """Collect what is due, without Kafka, and print what was removed.

    Removal events still go through the outbox. --dry-run runs the very same
    engine inside a transaction that is rolled back: it holds the row locks a
    real run takes while it runs.
    """
    configure_logging(log_level)
    if bool(repositories) == all_repositories:
        raise ConfigError("name repositories or give --all (not both)")
    settings = load_settings(
        database_url=database_url, batch_size=batch_size, repository_concurrency=concurrency
    )
    causation_id = command_causation_id("collect")
    structlog.contextvars.bind_contextvars(causation_id=causation_id)
    skipped: list[str] = []
    report = asyncio.run(
        _collect(
            settings,
            repositories or [],
            purge=purge,
            orphans=orphans,
            dry_run=dry_run,
            causation_id=causation_id,
            skipped=skipped,
        )
    )
    _print_report(report, dry_run=dry_run)
    if skipped:
        typer.echo(f"collect: not collected: {', '.join(skipped)}", err=True)
        raise typer.Exit(1)


async def _one_by_one(
    engine: Engine,
    work: list[tuple[int, str, bool]],
    orphans: bool,
    causation_id: str,
    skipped: list[str],
    *,
    named: bool,
) -> Report:
    """Collect (or, where asked, purge) each repository of ``work`` (id, name, purge) on
    its own. One that fails for a reason waiting will not change is named on stderr and
    added to ``skipped``; the others go on. A purge whose repository was unmarked or
    purged meanwhile is the user's error if ``named``, else skipped as collect_all does."""
    report = Report()
    for repository_id, name, purge in work:
        try:
            if purge:
                report.merge(await engine.purge(repository_id, causation_id=causation_id))
            else:
                report.merge(
                    await engine.collect(repository_id, causation_id=causation_id, orphans=orphans)
                )
        except (RepositoryNotMarked, RepositoryNotFound) as exc:
            if named:
                raise
            log.warning("purge_skipped", repository_id=repository_id, reason=str(exc))
        except Exception as exc:
            if waiting_changes(exc):
                raise
            skipped.append(name)
            typer.echo(f"collect: {name} skipped, it cannot be collected: {exc!r}", err=True)
    return report


async def _collect(
    settings: Settings,
    paths: list[str],
    *,
    purge: bool,
    orphans: bool,
    dry_run: bool,
    causation_id: str,
    skipped: list[str],
) -> Report:
    verb = "would remove" if dry_run else "removed"

    async def show(removal: Removal, cause: str) -> None:
        # One plain line per removal, never wrapped: scripts read these.
        typer.echo(f"{verb} {removal.event_type.removeprefix('registry.gc.')} {removal.subject}")

    callbacks = Callbacks()
    callbacks.on(Removal, show)
    config = EngineConfig.from_settings(settings)
    pool = await create_pool(
        settings.database_url,
        max_size=4 * settings.repository_concurrency + 2,
        wait_s=settings.connect_wait_s,
    )
    try:
        async with pool.acquire() as conn:
            targets = [await repository_rows.find(conn, path) for path in paths]
        if purge and (live := [r.path for r in targets if not r.marked_for_deletion]):
            raise ConfigError(f"not marked for deletion, refusing to purge: {', '.join(live)}")

        async def run(db: Database) -> Report:
            engine = Engine(db, config, callbacks=callbacks)
            if targets:
                work = [(repo.id, repo.path, purge) for repo in targets]
                return await _one_by_one(engine, work, orphans, causation_id, skipped, named=True)
            try:
                return await engine.collect_all(
                    causation_id=causation_id,
                    purge_marked=purge,
                    orphans=orphans,
                    concurrency=settings.repository_concurrency,
                )
            except Exception as exc:
                if waiting_changes(exc):
                    raise
                # Something in the registry fails the registry-wide pass: find what. The
                # run fails whatever the search finds (the orphan sweep's registry-wide
                # part, say, is not redone repository by repository).
                skipped.append("the registry-wide pass")
                typer.echo(
                    f"collect: the registry-wide collection failed ({exc!r});"
                    " collecting repository by repository",
                    err=True,
                )
            async with pool.acquire() as conn:
                due = await repository_rows.with_due_work(conn, SystemClock().now_ms())
                marked = await repository_rows.marked(conn) if purge else []
            work = [(r, f"repository {r}", False) for r in due if r not in marked]
            work += [(r, f"repository {r}", True) for r in marked]
            return await _one_by_one(engine, work, orphans, causation_id, skipped, named=False)

        if dry_run:
            async with RollbackDatabase.session(pool) as db:
                return await run(db)
        report = await run(PoolDatabase(pool))
        async with pool.acquire() as conn:
            waiting = await outbox.pending(conn)
        if waiting:
            # Nothing here publishes: without a relay, the blob deleter never hears of them.
            typer.echo(
                f"collect: {waiting:,} removal event(s) wait in gc.outbox; a running"
                " `collector run` publishes them to the removals topic",
                err=True,
            )
        return report
    finally:
        await pool.close()


def _print_report(report: Report, *, dry_run: bool) -> None:
    console = Console(highlight=False)
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


@app.command()
def verify(
    database_url: DatabaseUrl = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object on stdout.")] = False,
    log_level: LogLevel = "info",
) -> None:
    """Check integrity: exit 1 on any dangling reference; list garbage due but not collected."""
    configure_logging(log_level)
    settings = load_settings(database_url=database_url)

    async def main() -> Verification:
        pool = await create_pool(settings.database_url, max_size=1, wait_s=settings.connect_wait_s)
        try:
            async with pool.acquire() as conn:
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


@app.command()
def demo(
    repositories: Annotated[int, typer.Option(min=1, help="Image repositories to seed.")] = 200,
    seed: Annotated[int, typer.Option(help="Random seed of the seeded registry.")] = 0,
    storage_root: Annotated[
        Path | None,
        typer.Option(
            file_okay=False,
            metavar="DIR",
            help="Keep the demo's blob storage here (default: a temporary folder, removed).",
            show_default=False,
        ),
    ] = None,
    database_url: DatabaseUrl = None,
    kafka_bootstrap: KafkaBootstrap = None,
    log_level: LogLevel = "warning",
) -> None:
    """Seed a realistic registry and its blob storage, expire and delete part of it,
    collect it over Kafka with `collector run`, delete the removed blobs' files, verify.
    Needs a database `collector migrate` prepared (scripts/demo does both)."""
    configure_logging(log_level)
    settings = load_settings(database_url=database_url, kafka_bootstrap=kafka_bootstrap)
    console = Console(highlight=False)
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
    print_summary(result, console)
    raise typer.Exit(0 if result.ok else 1)


def _print_verification(result: Verification) -> None:
    console = Console(highlight=False)
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
