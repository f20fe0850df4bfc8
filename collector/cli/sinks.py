"""Downstream consumers of the removals topic: sink blob-deleter, audit."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Annotated

import typer

from collector.cli._app import app
from collector.cli._options import DatabaseUrl, KafkaBootstrap, LogLevel
from collector.config import load_settings
from collector.logging import configure_logging
from collector.sinks import audit as audit_replay
from collector.sinks.blob_deleter import BlobDeleter

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
