"""What the pipeline commands do (`publish`, `scan`, `run`); their flags are declared
in :mod:`collector.cli.pipeline`, which imports this module only when a command runs."""

from __future__ import annotations

import asyncio
import dataclasses
import signal
from collections.abc import Awaitable, Callable
from datetime import timedelta

import asyncpg
import structlog
import typer

from collector import publish
from collector.backoff import Backoff, transient
from collector.cli import _signals as signals
from collector.cli._output import json_line
from collector.cli._settings import configured
from collector.clock import SystemClock
from collector.db.connector import Connection, PoolDatabase, create_pool
from collector.engine import Engine, EngineConfig
from collector.engine import sweep as sweeps
from collector.errors import CollectorError
from collector.limits import engine_pool_size
from collector.service import Service, ServiceSummary
from events import CloudEvent, RequestData, command_causation_id

log = structlog.get_logger(__name__)


def publish_one(
    database_url: str | None,
    kafka_bootstrap: str | None,
    log_level: str | None,
    as_json: bool,
    build: Callable[[Connection], Awaitable[RequestData]],
) -> None:
    settings = configured(
        log_level=log_level, database_url=database_url, kafka_bootstrap=kafka_bootstrap
    )

    async def main() -> list[CloudEvent]:
        pool = await create_pool(settings.database_url, max_size=1, wait_s=settings.connect_wait_s)
        try:
            async with PoolDatabase(pool).connection() as conn:
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


def scan(
    *,
    every: float | None,
    orphans: bool,
    as_json: bool,
    concurrency: int | None,
    database_url: str | None,
    kafka_bootstrap: str | None,
    log_level: str | None,
) -> None:
    settings = configured(
        log_level=log_level,
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
            max_size=engine_pool_size(settings.repository_concurrency) if orphans else 1,
            wait_s=settings.connect_wait_s,
        )
        backoff = Backoff(first=1.0, cap=60.0)
        try:
            while True:
                try:
                    skipped = await scan_once(pool)
                    passes += 1
                except CollectorError as exc:
                    # What `scan --every` waits out instead of exiting: a lost database,
                    # an unreachable broker.
                    if every is None or not transient(exc):
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
        async with PoolDatabase(pool).connection() as conn:
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
            async with PoolDatabase(pool).connection() as conn:
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


def run(
    *,
    exit_when_idle: float | None,
    metrics_port: int | None,
    as_json: bool,
    concurrency: int | None,
    batch_size: int | None,
    database_url: str | None,
    kafka_bootstrap: str | None,
    log_level: str | None,
) -> None:
    settings = configured(
        log_level=log_level,
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
