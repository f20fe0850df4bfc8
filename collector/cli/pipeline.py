"""Commands of the Kafka pipeline: publish, scan, and run (the service): their flags;
what they do is in :mod:`collector.cli._pipeline`, imported when one runs."""

from __future__ import annotations

from typing import Annotated

import typer

from collector.cli._app import app
from collector.cli._options import (
    BatchSize,
    Concurrency,
    DatabaseUrl,
    KafkaBootstrap,
    LogLevel,
    MetricsPort,
)

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
    log_level: LogLevel = None,
) -> None:
    """Ask for the latest ended tag of that name to be collected once it is due."""
    from collector import publish
    from collector.cli import _pipeline

    _pipeline.publish_one(
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
    log_level: LogLevel = None,
) -> None:
    """Ask for the latest ended pre-OCI tag of that name to be collected once it is due."""
    from collector import publish
    from collector.cli import _pipeline

    _pipeline.publish_one(
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
    log_level: LogLevel = None,
) -> None:
    """Ask for a repository marked for deletion to be purged."""
    from collector import publish
    from collector.cli import _pipeline

    _pipeline.publish_one(
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
    log_level: LogLevel = None,
) -> None:
    """Ask for everything due in a repository to be collected."""
    from collector import publish
    from collector.cli import _pipeline

    _pipeline.publish_one(
        database_url,
        kafka_bootstrap,
        log_level,
        as_json,
        lambda c: publish.repo_sweep(c, repository),
    )


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
    log_level: LogLevel = None,
) -> None:
    """Find work no event announced (tags past their window, expired uploads, repositories
    marked for deletion) and publish requests for it: the safety net of the pipeline."""
    from collector.cli import _pipeline

    _pipeline.scan(
        every=every,
        orphans=orphans,
        as_json=as_json,
        concurrency=concurrency,
        database_url=database_url,
        kafka_bootstrap=kafka_bootstrap,
        log_level=log_level,
    )


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
    metrics_port: MetricsPort = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="The summary as one JSON object on stdout at exit.")
    ] = False,
    concurrency: Concurrency = None,
    batch_size: BatchSize = None,
    database_url: DatabaseUrl = None,
    kafka_bootstrap: KafkaBootstrap = None,
    log_level: LogLevel = None,
) -> None:
    """The service: consume requests, collect, publish removals. Stops cleanly on
    SIGTERM/SIGINT (exit 0: stopping is how a service ends)."""
    from collector.cli import _pipeline

    _pipeline.run(
        exit_when_idle=exit_when_idle,
        metrics_port=metrics_port,
        as_json=as_json,
        concurrency=concurrency,
        batch_size=batch_size,
        database_url=database_url,
        kafka_bootstrap=kafka_bootstrap,
        log_level=log_level,
    )
