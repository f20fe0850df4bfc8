"""Commands on the registry database: migrate, collect, verify, demo (their flags; what
they do is in :mod:`collector.cli._registry`, imported when one runs)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from collector.cli._app import app
from collector.cli._options import (
    BatchSize,
    Concurrency,
    DatabaseUrl,
    DemoLogLevel,
    Horizon,
    KafkaBootstrap,
    LogLevel,
)


@app.command()
def migrate(
    database_url: DatabaseUrl = None,
    kafka_bootstrap: KafkaBootstrap = None,
    skip_topics: Annotated[
        bool, typer.Option("--skip-topics", help="Only the database; leave Kafka alone.")
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="What was applied and created, as one JSON object.")
    ] = False,
    log_level: LogLevel = None,
) -> None:
    """Create or upgrade the registry schema, the gc schema and the topics. Idempotent."""
    from collector.cli import _registry

    _registry.migrate(
        database_url=database_url,
        kafka_bootstrap=kafka_bootstrap,
        skip_topics=skip_topics,
        as_json=as_json,
        log_level=log_level,
    )


@app.command()
def collect(
    repositories: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="NAMESPACE/REPOSITORY",
            help="Repositories to collect (or purge); or --all.",
            show_default=False,
        ),
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
    summary: Annotated[
        bool,
        typer.Option(
            "--summary",
            help="With --dry-run: the totals, bytes, shares and kept objects of `collector"
            " plan` for the same repositories instead of a line per object; locks nothing.",
        ),
    ] = False,
    publish: Annotated[
        bool,
        typer.Option(
            help="Publish the removal events before exiting (else they wait in gc.outbox"
            " for `collector run`)."
        ),
    ] = True,
    as_json: Annotated[
        bool, typer.Option("--json", help="JSON lines on stdout, the summary last.")
    ] = False,
    database_url: DatabaseUrl = None,
    kafka_bootstrap: KafkaBootstrap = None,
    batch_size: BatchSize = None,
    concurrency: Concurrency = None,
    log_level: LogLevel = None,
) -> None:
    """Collect what is due, without Kafka, and print what was removed.

    Removal events go through the outbox; collect publishes them to the removals
    topic before it exits (one publisher at a time: a running `collector run` may
    publish them instead). --dry-run runs the very same engine inside a transaction
    that is rolled back: it holds the row locks a real run takes while it runs;
    --dry-run --summary plans instead (`collector plan`), from a snapshot, locking nothing.
    """
    from collector.cli import _registry

    _registry.collect(
        repositories or [],
        all_repositories=all_repositories,
        purge=purge,
        orphans=orphans,
        dry_run=dry_run,
        summary=summary,
        publish=publish,
        as_json=as_json,
        database_url=database_url,
        kafka_bootstrap=kafka_bootstrap,
        batch_size=batch_size,
        concurrency=concurrency,
        log_level=log_level,
    )


@app.command()
def plan(
    repositories: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="NAMESPACE/REPOSITORY",
            help="Plan for these repositories only (default: the whole registry).",
            show_default=False,
        ),
    ] = None,
    namespace: Annotated[
        str | None,
        typer.Option(metavar="NS", help="Plan for this namespace only.", show_default=False),
    ] = None,
    horizon: Horizon = 7 * 86_400,
    top: Annotated[
        int, typer.Option(min=1, max=1000, metavar="N", help="Rows per table and list.")
    ] = 10,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object on stdout.")] = False,
    database_url: DatabaseUrl = None,
    log_level: LogLevel = None,
) -> None:
    """Show what a collection would remove now and within the horizon, and the bytes it
    would free, by namespace and repository; what the rules keep. Changes nothing.

    Decided by the collectors' own rules in one read-only snapshot: it takes no row
    lock, so pushes never wait on it. Marked repositories count as purged (`scan`
    asks for their purge).
    """
    from collector.cli import _plan

    _plan.run(
        repositories or [],
        namespace=namespace,
        horizon_s=horizon,
        top=top,
        as_json=as_json,
        database_url=database_url,
        log_level=log_level,
    )


@app.command()
def verify(
    database_url: DatabaseUrl = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object on stdout.")] = False,
    log_level: LogLevel = None,
) -> None:
    """Check integrity: exit 1 on any dangling reference; list garbage due but not collected."""
    from collector.cli import _registry

    _registry.verify(database_url=database_url, as_json=as_json, log_level=log_level)


@app.command()
def demo(
    repositories: Annotated[
        int, typer.Option(min=1, metavar="N", help="Image repositories to seed.")
    ] = 200,
    seed: Annotated[int, typer.Option(metavar="N", help="Random seed of the seeded registry.")] = 0,
    storage_root: Annotated[
        Path | None,
        typer.Option(
            file_okay=False,
            metavar="DIR",
            help="Keep the demo's blob storage here (default: a temporary folder, removed).",
            show_default=False,
        ),
    ] = None,
    as_json: Annotated[
        bool,
        typer.Option(
            "--json", help="The summary as one JSON object on stdout; progress on stderr."
        ),
    ] = False,
    database_url: DatabaseUrl = None,
    kafka_bootstrap: KafkaBootstrap = None,
    log_level: DemoLogLevel = None,
) -> None:
    """Seed a realistic registry and its blob storage, expire and delete part of it,
    collect it over Kafka with `collector run`, delete the removed blobs' files, verify.
    Migrates the database and creates the topics first, as `collector migrate` does."""
    from collector.cli import _registry

    _registry.demo(
        repositories=repositories,
        seed=seed,
        storage_root=storage_root,
        database_url=database_url,
        kafka_bootstrap=kafka_bootstrap,
        as_json=as_json,
        log_level=log_level,
    )
