"""The ``collector`` command line (CONTRACT §4).

Exit codes: 0 success, 1 a failure found (``verify``) or a run that failed,
2 a usage or configuration error, always with a one-line reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
import tempfile
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, NoReturn

import structlog
import typer
from rich.console import Console
from rich.table import Table

from collector import kafka, publish
from collector.config import Settings, load_settings
from collector.db.connector import (
    Connection,
    Database,
    PoolDatabase,
    RollbackDatabase,
    create_pool,
)
from collector.db.migrations import migrate as apply_migrations
from collector.demo.run import print_summary, run_demo
from collector.demo.seed import Shape
from collector.engine import Callbacks, Engine, EngineConfig, Report, SystemClock
from collector.engine import repositories as repository_rows
from collector.errors import CollectorError, ConfigError, RepositoryNotFound
from collector.logging import configure_logging
from collector.service import Service, ServiceSummary
from collector.sinks import audit as audit_replay
from collector.sinks.blob_deleter import BlobDeleter
from collector.verify import Verification
from collector.verify import verify as verify_registry
from events import CloudEvent, Removal, RequestData

app = typer.Typer(
    name="collector",
    help="Garbage collector for container registry metadata and storage.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Plain help text: rich markup would eat the "[env: COLLECTOR_…]" hints.
    rich_markup_mode=None,
)

DatabaseUrl = Annotated[
    str | None,
    typer.Option(
        help="PostgreSQL DSN of the registry [env: COLLECTOR_DATABASE_URL]", show_default=False
    ),
]
KafkaBootstrap = Annotated[
    str | None,
    typer.Option(
        help="Kafka bootstrap servers [env: COLLECTOR_KAFKA_BOOTSTRAP]", show_default=False
    ),
]
BatchSize = Annotated[
    int | None,
    typer.Option(
        help="Objects decided per transaction [env: COLLECTOR_BATCH_SIZE]", show_default=False
    ),
]
Concurrency = Annotated[
    int | None,
    typer.Option(
        help="Repositories collected at once (run: workers)"
        " [env: COLLECTOR_REPOSITORY_CONCURRENCY]",
        show_default=False,
    ),
]
LogLevel = Annotated[
    str,
    typer.Option(
        help="debug, info, warning or error",
        envvar="COLLECTOR_LOG_LEVEL",
    ),
]


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
        pool = await create_pool(settings.database_url, max_size=1, wait_s=settings.connect_wait_s)
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
    causation_id = f"cli-{uuid.uuid4()}"
    structlog.contextvars.bind_contextvars(causation_id=causation_id)
    report = asyncio.run(
        _collect(
            settings, repositories or [], purge=purge, dry_run=dry_run, causation_id=causation_id
        )
    )
    _print_report(report, dry_run=dry_run)


async def _collect(
    settings: Settings, paths: list[str], *, purge: bool, dry_run: bool, causation_id: str
) -> Report:
    verb = "would remove" if dry_run else "removed"

    async def show(removal: Removal, cause: str) -> None:
        # One plain line per removal, never wrapped: scripts read these.
        typer.echo(f"{verb} {removal.event_type.removeprefix('registry.gc.')} {removal.subject}")

    callbacks = Callbacks()
    callbacks.on(Removal, show)
    config = EngineConfig(
        batch_size=settings.batch_size, protected_digests=tuple(settings.protected_digests)
    )
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
            if not targets:
                return await engine.collect_all(
                    causation_id=causation_id,
                    purge_marked=purge,
                    concurrency=settings.repository_concurrency,
                )
            report = Report()
            for repo in targets:
                one = engine.purge if purge else engine.collect
                report.merge(await one(repo.id, causation_id=causation_id))
            return report

        if dry_run:
            async with RollbackDatabase.session(pool) as db:
                return await run(db)
        return await run(PoolDatabase(pool))
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
                }
            )
        )
    else:
        _print_verification(result)
    raise typer.Exit(0 if result.ok else 1)


publish_app = typer.Typer(
    help="Put a request on the requests topic, reading ids from the database.",
    no_args_is_help=True,
)
app.add_typer(publish_app, name="publish")

RepositoryPath = Annotated[str, typer.Argument(metavar="NAMESPACE/REPOSITORY")]


@publish_app.command("tag-expired")
def publish_tag_expired(
    repository: RepositoryPath,
    tag: Annotated[str, typer.Argument(metavar="TAG")],
    database_url: DatabaseUrl = None,
    kafka_bootstrap: KafkaBootstrap = None,
    log_level: LogLevel = "info",
) -> None:
    """Ask for the latest ended tag of that name to be collected once it is due."""
    _publish(
        database_url, kafka_bootstrap, log_level, lambda c: publish.tag_expired(c, repository, tag)
    )


@publish_app.command("repo-deleted")
def publish_repo_deleted(
    repository: RepositoryPath,
    database_url: DatabaseUrl = None,
    kafka_bootstrap: KafkaBootstrap = None,
    log_level: LogLevel = "info",
) -> None:
    """Ask for a repository marked for deletion to be purged."""
    _publish(
        database_url, kafka_bootstrap, log_level, lambda c: publish.repo_deleted(c, repository)
    )


@publish_app.command("repo-sweep")
def publish_repo_sweep(
    repository: RepositoryPath,
    database_url: DatabaseUrl = None,
    kafka_bootstrap: KafkaBootstrap = None,
    log_level: LogLevel = "info",
) -> None:
    """Ask for everything due in a repository to be collected."""
    _publish(database_url, kafka_bootstrap, log_level, lambda c: publish.repo_sweep(c, repository))


def _publish(
    database_url: str | None,
    kafka_bootstrap: str | None,
    log_level: str,
    build: Callable[[Connection], Awaitable[RequestData]],
) -> None:
    configure_logging(log_level)
    settings = load_settings(database_url=database_url, kafka_bootstrap=kafka_bootstrap)

    async def main() -> list[CloudEvent]:
        pool = await create_pool(settings.database_url, max_size=1, wait_s=settings.connect_wait_s)
        try:
            async with pool.acquire() as conn:
                request = await build(conn)
        finally:
            await pool.close()
        return await publish.publish(settings, [request])

    for event in asyncio.run(main()):
        typer.echo(f"published {event.type.removeprefix('registry.gc.')} id={event.id}")


@app.command()
def scan(
    every: Annotated[
        float | None,
        typer.Option(min=0.1, help="Scan again every SECONDS until SIGTERM/SIGINT."),
    ] = None,
    database_url: DatabaseUrl = None,
    kafka_bootstrap: KafkaBootstrap = None,
    log_level: LogLevel = "info",
) -> None:
    """Find work no event announced (tags past their window, expired uploads, repositories
    marked for deletion) and publish requests for it: the safety net of the pipeline."""
    configure_logging(log_level)
    settings = load_settings(database_url=database_url, kafka_bootstrap=kafka_bootstrap)

    async def main() -> None:
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stopping.set)
        pool = await create_pool(settings.database_url, max_size=1, wait_s=settings.connect_wait_s)
        try:
            while True:
                async with pool.acquire() as conn:
                    requests = await publish.scan(conn, SystemClock().now_ms())
                events = await publish.publish(settings, requests) if requests else []
                for request, event in zip(requests, events, strict=True):
                    kind = event.type.removeprefix("registry.gc.")
                    typer.echo(f"published {kind} {request.repository_path} id={event.id}")
                typer.echo(f"scan: {len(events)} request(s) published", err=True)
                if every is None:
                    return
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(every):
                        await stopping.wait()
                if stopping.is_set():
                    return
        finally:
            await pool.close()

    asyncio.run(main())


@app.command()
def run(
    exit_when_idle: Annotated[
        float | None,
        typer.Option(
            min=0.0,
            metavar="SECONDS",
            help="Exit after SECONDS with the topic read, no request due and the outbox empty.",
        ),
    ] = None,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=65535,
            metavar="PORT",
            help="Serve Prometheus metrics on 127.0.0.1:PORT/metrics (address:"
            " COLLECTOR_METRICS_ADDRESS) [env: COLLECTOR_METRICS_PORT]",
            show_default=False,
        ),
    ] = None,
    concurrency: Concurrency = None,
    batch_size: BatchSize = None,
    database_url: DatabaseUrl = None,
    kafka_bootstrap: KafkaBootstrap = None,
    log_level: LogLevel = "info",
) -> None:
    """The service: consume requests, collect, publish removals. Stops cleanly on
    SIGTERM/SIGINT."""
    configure_logging(log_level)
    settings = load_settings(
        database_url=database_url,
        kafka_bootstrap=kafka_bootstrap,
        repository_concurrency=concurrency,
        batch_size=batch_size,
        metrics_port=metrics_port,
    )

    async def main() -> ServiceSummary:
        service = Service(settings, exit_when_idle_s=exit_when_idle)
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, service.stop)
        return await service.run()

    summary = asyncio.run(main())
    outcomes = ", ".join(f"{count} {name}" for name, count in sorted(summary.outcomes.items()))
    refused = sum(summary.refused.values())
    typer.echo(
        f"run: {summary.received} record(s) received, {summary.accepted} accepted,"
        f" {summary.duplicates} duplicate(s), {refused} refused;"
        f" requests finished: {outcomes or 'none'};"
        f" {summary.published} event(s) published in {summary.seconds:.1f} s",
        err=True,
    )


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
    collect it over Kafka with `collector run`, delete the removed blobs' files, verify."""
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


sink_app = typer.Typer(help="Downstream consumers of the removals topic.", no_args_is_help=True)
app.add_typer(sink_app, name="sink")


@sink_app.command("blob-deleter")
def sink_blob_deleter(
    storage_root: Annotated[
        Path,
        typer.Option(
            exists=True,
            file_okay=False,
            resolve_path=True,
            metavar="DIR",
            help="Blob storage: DIR/sha256/ab/abcdef… [env: COLLECTOR_STORAGE_ROOT]",
            envvar="COLLECTOR_STORAGE_ROOT",
            show_default=False,
        ),
    ],
    exit_when_idle: Annotated[
        float | None,
        typer.Option(min=0.0, metavar="SECONDS", help="Exit after SECONDS without a new record."),
    ] = None,
    database_url: DatabaseUrl = None,
    kafka_bootstrap: KafkaBootstrap = None,
    log_level: LogLevel = "info",
) -> None:
    """Delete the bytes of every removed blob, idempotently; keep those of a digest pushed
    again since. Group: COLLECTOR_SINK_GROUP_ID. Stops cleanly on SIGTERM/SIGINT."""
    configure_logging(log_level)
    settings = load_settings(database_url=database_url, kafka_bootstrap=kafka_bootstrap)

    async def main() -> BlobDeleter:
        deleter = BlobDeleter(settings, storage_root, exit_when_idle=exit_when_idle)
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, deleter.stop)
        await deleter.run()
        return deleter

    typer.echo(asyncio.run(main()).counts.summary(), err=True)


@app.command()
def audit(
    since: Annotated[
        str | None,
        typer.Option(
            metavar="TIME",
            help="Only removals from TIME on: an RFC 3339 time or a date.",
            show_default=False,
        ),
    ] = None,
    repositories: Annotated[
        list[str] | None,
        typer.Option(
            "--repository",
            metavar="NAMESPACE/REPOSITORY",
            help="Only removals in this repository (repeatable).",
            show_default=False,
        ),
    ] = None,
    digests: Annotated[
        list[str] | None,
        typer.Option(
            "--digest",
            metavar="DIGEST",
            help="Only removals of this blob or manifest digest, or of tags on it (repeatable).",
            show_default=False,
        ),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="JSON lines on stdout, the summary last.")
    ] = False,
    kafka_bootstrap: KafkaBootstrap = None,
    log_level: LogLevel = "info",
) -> None:
    """Replay the removals topic into a report: what was removed, when, and which request
    caused it (read from the requests topic). Uses no consumer group."""
    configure_logging(log_level)
    query = audit_replay.Query.parse(since, repositories or [], digests or [])
    settings = load_settings(kafka_bootstrap=kafka_bootstrap)
    report = asyncio.run(audit_replay.audit(settings, query))
    lines = audit_replay.json_lines(report) if as_json else audit_replay.text_lines(report)
    for line in lines:
        typer.echo(line)


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
    if result.garbage:
        table = Table(title="garbage due, not collected yet", title_justify="left")
        for column in ("kind", "rows", "sample ids"):
            table.add_column(column)
        for finding in result.garbage:
            table.add_row(finding.what, str(finding.rows), ", ".join(map(str, finding.sample)))
        console.print(table)
    else:
        console.print("garbage: none due")


def main(argv: list[str] | None = None) -> None:
    """Entry point: one-line errors, contract exit codes."""
    args = sys.argv[1:] if argv is None else argv
    try:
        code = app(args=args or ["--help"], prog_name="collector", standalone_mode=False)
    except typer.TyperException as exc:  # usage errors carry exit code 2
        # A group called without its command carries its help: show it, then say what
        # is missing (matched by name, as typer does: the class is private).
        if type(exc).__name__ == "NoArgsIsHelpError":
            print(exc.format_message(), file=sys.stderr)
            _fail(exc.exit_code, "missing command (see the help above)")
        _fail(exc.exit_code, exc.format_message())
    except (ConfigError, RepositoryNotFound) as exc:
        _fail(2, str(exc))
    except CollectorError as exc:
        _fail(1, str(exc))
    except (typer.Abort, KeyboardInterrupt):
        _fail(130, "interrupted")
    sys.exit(code if isinstance(code, int) else 0)


def _fail(code: int, message: str) -> NoReturn:
    lines = message.strip().splitlines() or ["failed"]
    print(f"collector: error: {lines[0]}", file=sys.stderr)
    sys.exit(code)
