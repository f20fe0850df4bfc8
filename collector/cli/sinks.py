"""Downstream consumers of the removals topic: sink blob-deleter, audit."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer

from collector.cli import _signals as signals
from collector.cli._app import app
from collector.cli._options import DatabaseUrl, KafkaBootstrap, LogLevel
from collector.cli._output import json_line
from collector.config import load_settings
from collector.logging import configure_logging
from collector.sinks import audit as audit_replay
from collector.sinks.blob_deleter import DEFAULT_MAX_MISSING, BlobDeleter
from collector.sinks.storage import FilesystemStorage

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
            help="Blob storage: DIR/sha256/ab/abcdef…",
            envvar="COLLECTOR_STORAGE_ROOT",
            show_default=False,
        ),
    ],
    exit_when_idle: Annotated[
        float | None,
        typer.Option(min=0.0, metavar="SECONDS", help="Exit after SECONDS without a new record."),
    ] = None,
    max_missing: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=1.0,
            metavar="SHARE",
            help="Stop, committing nothing, when more than SHARE of a batch's files are gone"
            " and no deleter deleted them (a storage not mounted); 1 lets all through.",
        ),
    ] = DEFAULT_MAX_MISSING,
    as_json: Annotated[
        bool, typer.Option("--json", help="The summary as one JSON object on stdout.")
    ] = False,
    database_url: DatabaseUrl = None,
    kafka_bootstrap: KafkaBootstrap = None,
    log_level: LogLevel = "info",
) -> None:
    """Delete the bytes of every removed blob, idempotently; keep those of a digest pushed
    again since. Group: COLLECTOR_SINK_GROUP_ID. On SIGTERM/SIGINT it finishes the batch
    in hand, commits it and exits 143/130."""
    configure_logging(log_level)
    settings = load_settings(database_url=database_url, kafka_bootstrap=kafka_bootstrap)
    storage = FilesystemStorage(storage_root)
    storage.check()
    deleter = BlobDeleter(settings, storage, exit_when_idle=exit_when_idle, max_missing=max_missing)
    received: list[int] = []

    def stop(signum: int) -> None:
        received.append(signum)
        deleter.stop()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for signum in signals.SIGNALS:
            loop.add_signal_handler(signum, stop, signum)
        await deleter.run()

    try:
        asyncio.run(main())
    finally:
        counts = deleter.counts
        if as_json:
            json_line({"summary": vars(counts)})
        else:
            typer.echo(counts.summary(), err=True)
    if received:
        raise signals.Interrupted(
            received[0], f"blob-deleter stopped by {signals.name(received[0])}"
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
    log_level: LogLevel = "info",
) -> None:
    """Replay the removals topic into a report: what was removed, when, and which request
    caused it (read from the requests topic). Uses no consumer group."""
    configure_logging(log_level)
    query = audit_replay.Query.parse(since, repositories or [], digests or [])
    settings = load_settings(kafka_bootstrap=kafka_bootstrap)
    try:
        report = signals.run(audit_replay.audit(settings, query))
    except signals.Interrupted as exc:
        message = (
            f"audit interrupted by {exc.signal_name}: it only reads, nothing is left half-done"
        )
        raise signals.Interrupted(exc.signum, message) from None
    lines = audit_replay.json_lines(report) if as_json else audit_replay.text_lines(report)
    for line in lines:
        typer.echo(line)
