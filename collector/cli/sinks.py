"""Downstream consumers of the removals topic: sink blob-deleter, audit (their flags;
what they do is in :mod:`collector.cli._sinks`, imported when one runs)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from collector.cli._app import app
from collector.cli._options import DatabaseUrl, KafkaBootstrap, LogLevel, MetricsPort
from collector.limits import MAX_MISSING

sink_app = typer.Typer(help="Downstream consumers of the removals topic.", no_args_is_help=True)
app.add_typer(sink_app, name="sink")


@sink_app.command("blob-deleter")
def sink_blob_deleter(
    storage_root: Annotated[
        Path | None,
        typer.Option(
            exists=True,
            file_okay=False,
            resolve_path=True,
            metavar="DIR",
            help="Blob storage, required: DIR/sha256/ab/abcdef…  [env var: COLLECTOR_STORAGE_ROOT]",
            show_default=False,
        ),
    ] = None,
    exit_when_idle: Annotated[
        float | None,
        typer.Option(min=0.0, metavar="SECONDS", help="Exit after SECONDS without a new record."),
    ] = None,
    max_missing: Annotated[
        float | None,
        typer.Option(
            min=MAX_MISSING[0],
            max=MAX_MISSING[1],
            metavar="SHARE",
            help="Stop, committing nothing, when more than SHARE (default 0.1) of a batch's"
            " files are gone and no deleter deleted them (a storage not mounted); 1 lets"
            " all through  [env var: COLLECTOR_MAX_MISSING]",
            show_default=False,
        ),
    ] = None,
    metrics_port: MetricsPort = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="The summary as one JSON object on stdout.")
    ] = False,
    database_url: DatabaseUrl = None,
    kafka_bootstrap: KafkaBootstrap = None,
    log_level: LogLevel = None,
) -> None:
    """Delete the bytes of every removed blob, idempotently; keep those of a digest pushed
    again since. Group: COLLECTOR_SINK_GROUP_ID. On SIGTERM/SIGINT it finishes the batch
    in hand, commits it and exits 143/130."""
    from collector.cli import _sinks

    _sinks.blob_deleter(
        storage_root=storage_root,
        exit_when_idle=exit_when_idle,
        max_missing=max_missing,
        metrics_port=metrics_port,
        as_json=as_json,
        database_url=database_url,
        kafka_bootstrap=kafka_bootstrap,
        log_level=log_level,
    )


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
    log_level: LogLevel = None,
) -> None:
    """Replay the removals topic into a report: what was removed, when, and which request
    caused it (read from the requests topic). Uses no consumer group."""
    from collector.cli import _sinks

    _sinks.audit(
        since=since,
        repositories=repositories or [],
        digests=digests or [],
        as_json=as_json,
        kafka_bootstrap=kafka_bootstrap,
        log_level=log_level,
    )
