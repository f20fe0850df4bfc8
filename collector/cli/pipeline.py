"""Commands of the Kafka pipeline: publish, scan, and run (the service)."""

from __future__ import annotations

import asyncio
import dataclasses
import signal
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Annotated

import asyncpg
import structlog
import typer

from collector import publish
from collector.backoff import Backoff
from collector.cli import _signals as signals
from collector.cli._app import app
from collector.cli._options import BatchSize, Concurrency, DatabaseUrl, KafkaBootstrap, LogLevel
from collector.cli._output import json_line
from collector.config import load_settings
from collector.db.connector import DISCONNECTS, Connection, PoolDatabase, create_pool
from collector.engine import Engine, EngineConfig, SystemClock
from collector.engine import sweep as sweeps
from collector.errors import BrokerUnavailable, DatabaseUnavailable
from collector.logging import configure_logging
from collector.service import Service, ServiceSummary
from events import CloudEvent, RequestData, command_causation_id

log = structlog.get_logger(__name__)
#: What `scan --every` waits out instead of exiting: lost database, unreachable broker.
_OUTAGES = (DatabaseUnavailable, BrokerUnavailable, *DISCONNECTS)

publish_app = typer.Typer(
    help="Put a request on the requests topic, reading ids from the database.",
    no_args_is_help=True,
)
app.add_typer(publish_app, name="publish")

RepositoryPath = Annotated[str, typer.Argument(metavar="NAMESPACE/REPOSITORY")]
PublishedJson = Annotated[
    bool, typer.Option("--json", help="One JSON object per published request on stdout.")
]


@publish_app.command("tag-expired")
def publish_tag_expired(
    repository: RepositoryPath,
    tag: Annotated[str, typer.Argument(metavar="TAG")],
    database_url: DatabaseUrl = None,
    kafka_bootstrap: KafkaBootstrap = None,
    as_json: PublishedJson = False,
    log_level: LogLevel = "info",
) -> None:
    """Ask for the latest ended tag of that name to be collected once it is due."""
    _publish(
        database_url,
        kafka_bootstrap,
        log_level,
        as_json,
        lambda c: publish.tag_expired(c, repository, tag),
    )


@publish_app.command("legacy-tag-expired")
def publish_legacy_tag_expired(
    repository: RepositoryPath,
    tag: Annotated[str, typer.Argument(metavar="TAG")],
    database_url: DatabaseUrl = None,
    kafka_bootstrap: KafkaBootstrap = None,
    as_json: PublishedJson = False,
    log_level: LogLevel = "info",
) -> None:
    """Ask for the latest ended pre-OCI tag of that name to be collected once it is due."""
    _publish(
        database_url,
        kafka_bootstrap,
        log_level,
        as_json,
        lambda c: publish.legacy_tag_expired(c, repository, tag),
    )


@publish_app.command("repo-deleted")
def publish_repo_deleted(
    repository: RepositoryPath,
    database_url: DatabaseUrl = None,
    kafka_bootstrap: KafkaBootstrap = None,
    as_json: PublishedJson = False,
    log_level: LogLevel = "info",
) -> None:
    """Ask for a repository marked for deletion to be purged."""
    _publish(
        database_url,
        kafka_bootstrap,
        log_level,
        as_json,
        lambda c: publish.repo_deleted(c, repository),
    )


@publish_app.command("repo-sweep")
def publish_repo_sweep(
    repository: RepositoryPath,
    database_url: DatabaseUrl = None,
    kafka_bootstrap: KafkaBootstrap = None,
    as_json: PublishedJson = False,
    log_level: LogLevel = "info",
) -> None:
    """Ask for everything due in a repository to be collected."""
    _publish(
        database_url,
        kafka_bootstrap,
        log_level,
        as_json,
        lambda c: publish.repo_sweep(c, repository),
    )


def _publish(
    database_url: str | None,
    kafka_bootstrap: str | None,
    log_level: str,
    as_json: bool,
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
        kind = event.type.removeprefix("registry.gc.")
        if as_json:
            json_line({"published": kind, "id": event.id, "data": event.data})
        else:
            typer.echo(f"published {kind} id={event.id}")


@app.command()
def scan(
    every: Annotated[
        float | None,
        typer.Option(
            min=0.1, metavar="SECONDS", help="Scan again every SECONDS until SIGTERM/SIGINT."
        ),
    ] = None,
    orphans: Annotated[
        bool,
        typer.Option(
            "--orphans",
            help="Also sweep the registry for objects nothing references and no event"
            " announced (older than COLLECTOR_ORPHAN_GRACE_S) and collect them; with"
            " --every, once every COLLECTOR_ORPHAN_SWEEP_EVERY_S.",
        ),
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="JSON lines on stdout, a summary after each scan.")
    ] = False,
    concurrency: Concurrency = None,
    database_url: DatabaseUrl = None,
    kafka_bootstrap: KafkaBootstrap = None,
    log_level: LogLevel = "info",
) -> None:
    """Find work no event announced (tags past their window, expired uploads, repositories
    marked for deletion) and publish requests for it: the safety net of the pipeline."""
    configure_logging(log_level)
    settings = load_settings(
        database_url=database_url,
        kafka_bootstrap=kafka_bootstrap,
        repository_concurrency=concurrency,
    )
    sweep_every = timedelta(seconds=settings.orphan_sweep_every_s if every else 0)
    published = passes = 0

    async def main() -> int:
        """Scan (again and again with --every); return how many repositories the last
        scan could not request."""
        nonlocal passes
        pool = await create_pool(
            settings.database_url,
            max_size=4 * settings.repository_concurrency + 2 if orphans else 1,
            wait_s=settings.connect_wait_s,
        )
        backoff = Backoff(first=1.0, cap=60.0)
        try:
            while True:
                try:
                    skipped = await scan_once(pool)
                    passes += 1
                except _OUTAGES as exc:
                    if every is None:
                        raise
                    # Kept going: the next scan finds whatever this one missed.
                    delay = backoff.next()
                    log.warning("scan_failed", error=str(exc), retry_in_s=round(delay, 1))
                else:
                    if every is None:
                        return skipped
                    backoff, delay = Backoff(first=1.0, cap=60.0), every
                await asyncio.sleep(delay)
        finally:
            await pool.close()

    async def scan_once(pool: asyncpg.Pool[asyncpg.Record]) -> int:
        """Publish what is found; return how many repositories could not be requested."""
        nonlocal published
        async with pool.acquire() as conn:
            found = await publish.scan(conn, SystemClock().now_ms())
        requests = found.requests
        events = await publish.publish(settings, requests) if requests else []
        published += len(events)
        for request, event in zip(requests, events, strict=True):
            kind = event.type.removeprefix("registry.gc.")
            if as_json:
                json_line(
                    {"published": kind, "repository": request.repository_path, "id": event.id}
                )
            else:
                typer.echo(f"published {kind} {request.repository_path} id={event.id}")
        for skipped in found.unrequestable:
            typer.echo(
                f"scan: repository {skipped.repository_id} skipped, its row cannot be named"
                f" in a request ({skipped.reason}); `collector collect --all` reaches it",
                err=True,
            )
        sweep = None
        if orphans:
            async with pool.acquire() as conn:
                due = await sweeps.is_due(conn, sweep_every)
            if due:
                sweep = await sweep_once(pool)
        if as_json:
            unrequestable = [s.repository_id for s in found.unrequestable]
            json_line(
                {"summary": {"published": len(events), "skipped": unrequestable, "sweep": sweep}}
            )
        else:
            typer.echo(f"scan: {len(events)} request(s) published", err=True)
        return len(found.unrequestable)

    async def sweep_once(pool: asyncpg.Pool[asyncpg.Record]) -> dict[str, int]:
        engine = Engine(PoolDatabase(pool), EngineConfig.from_settings(settings))
        report = await engine.sweep_orphans(
            causation_id=command_causation_id("scan"),
            concurrency=settings.repository_concurrency,
        )
        if not as_json:
            typer.echo(
                f"sweep: {report.sweep.scanned:,} rows judged"
                f" ({report.sweep.rows_per_s:,.0f} rows/s), {report.sweep.queued:,} orphans"
                f" queued; removed {report.total:,} objects, {report.bytes_freed:,} bytes",
                err=True,
            )
        return {
            "judged": report.sweep.scanned,
            "queued": report.sweep.queued,
            "removed": report.total,
            "bytes_freed": report.bytes_freed,
        }

    try:
        skipped = signals.run(main())
    except signals.Interrupted as exc:
        raise signals.Interrupted(
            exc.signum,
            f"scan stopped by {exc.signal_name}: {published:,} request(s) published in"
            f" {passes:,} complete scan(s); the next scan finds what this one did not reach",
        ) from None
    if skipped:
        raise typer.Exit(1)


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
            " COLLECTOR_METRICS_ADDRESS)  [env var: COLLECTOR_METRICS_PORT]",
            show_default=False,
        ),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="The summary as one JSON object on stdout at exit.")
    ] = False,
    concurrency: Concurrency = None,
    batch_size: BatchSize = None,
    database_url: DatabaseUrl = None,
    kafka_bootstrap: KafkaBootstrap = None,
    log_level: LogLevel = "info",
) -> None:
    """The service: consume requests, collect, publish removals. Stops cleanly on
    SIGTERM/SIGINT (exit 0: stopping is how a service ends)."""
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
    if as_json:
        json_line({"summary": dataclasses.asdict(summary)})
        return
    outcomes = ", ".join(f"{count} {name}" for name, count in sorted(summary.outcomes.items()))
    refused = sum(summary.refused.values())
    typer.echo(
        f"run: {summary.received} record(s) received, {summary.accepted} accepted,"
        f" {summary.duplicates} duplicate(s), {refused} refused;"
        f" requests finished: {outcomes or 'none'};"
        f" {summary.published} event(s) published in {summary.seconds:.1f} s",
        err=True,
    )
    if summary.undeliverable:
        typer.echo(
            f"run: {summary.undeliverable} event(s) larger than the broker takes were set"
            " aside in gc.outbox (column undeliverable)",
            err=True,
        )
