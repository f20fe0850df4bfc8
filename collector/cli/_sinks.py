"""What the downstream commands do (`sink blob-deleter`, `audit`); their flags are
declared in :mod:`collector.cli.sinks`, which imports this module only when one runs."""

from __future__ import annotations

import asyncio
from pathlib import Path

import typer

from collector.cli import _signals as signals
from collector.cli._output import json_line
from collector.cli._settings import configured
from collector.errors import ConfigError
from collector.sinks import audit as audit_replay
from collector.sinks.blob_deleter import BlobDeleter
from collector.sinks.storage import FilesystemStorage


def blob_deleter(
    *,
    storage_root: Path | None,
    exit_when_idle: float | None,
    max_missing: float | None,
    metrics_port: int | None,
    as_json: bool,
    database_url: str | None,
    kafka_bootstrap: str | None,
    log_level: str | None,
) -> None:
    settings = configured(
        log_level=log_level,
        storage_root=storage_root,
        database_url=database_url,
        kafka_bootstrap=kafka_bootstrap,
        max_missing=max_missing,
        metrics_port=metrics_port,
    )
    if settings.storage_root is None:
        raise ConfigError("no storage root: give --storage-root DIR or COLLECTOR_STORAGE_ROOT")
    storage = FilesystemStorage(settings.storage_root.resolve())
    storage.check()
    deleter = BlobDeleter(settings, storage, exit_when_idle=exit_when_idle)
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


def audit(
    *,
    since: str | None,
    repositories: list[str],
    digests: list[str],
    as_json: bool,
    kafka_bootstrap: str | None,
    log_level: str | None,
) -> None:
    query = audit_replay.Query.parse(since, repositories or [], digests or [])
    settings = configured(log_level=log_level, kafka_bootstrap=kafka_bootstrap)
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
