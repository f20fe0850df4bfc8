"""`collector dead-letters`: list what the collector refused, and resubmit it."""

from __future__ import annotations

from typing import Annotated

import typer

from collector.cli import _signals as signals
from collector.cli._app import app
from collector.cli._options import KafkaBootstrap, LogLevel


@app.command("dead-letters")
def dead_letters(
    reasons: Annotated[
        list[str] | None,
        typer.Option(
            "--reason",
            metavar="REASON",
            help="Only dead letters refused for REASON, e.g. malformed-json,"
            " repository-not-marked (repeatable).",
            show_default=False,
        ),
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(
            metavar="TIME",
            help="Only dead letters from TIME on: an RFC 3339 time or a date.",
            show_default=False,
        ),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="JSON lines on stdout, the summary last.")
    ] = False,
    resubmit: Annotated[
        bool,
        typer.Option(
            "--resubmit",
            help="Put the selected dead letters' original records back on the requests"
            " topic as new records. Resubmitting a dead letter again is harmless: a"
            " request the collector accepted is known by its id and dropped as a"
            " duplicate. Records whose value would be refused again are skipped, and"
            " named; exit 1 if any was.",
        ),
    ] = False,
    kafka_bootstrap: KafkaBootstrap = None,
    log_level: LogLevel = None,
) -> None:
    """List the records the collector refused (the dead-letter topic): one line each, then
    counts by reason on stderr. Records on that topic that are no dead letter are listed
    as unreadable. Uses no consumer group."""
    from collector.cli._settings import configured
    from collector.sinks import dead_letters as letters

    query = letters.Query.parse(since, reasons or [])
    settings = configured(log_level=log_level, kafka_bootstrap=kafka_bootstrap)

    async def main() -> tuple[letters.Listing, letters.Resubmission | None]:
        listing = await letters.dead_letters(settings, query)
        if not resubmit:
            return listing, None
        return listing, await letters.resubmit(settings, listing.letters)

    try:
        listing, resubmission = signals.run(main())
    except signals.Interrupted as exc:
        done = (
            "some of the selected may be resubmitted already (again is harmless)"
            if resubmit
            else "it only reads, nothing is left half-done"
        )
        message = f"dead-letters interrupted by {exc.signal_name}: {done}"
        raise signals.Interrupted(exc.signum, message) from None
    if as_json:
        for line in letters.json_lines(listing, resubmission):
            typer.echo(line)
    else:
        for line in letters.text_lines(listing):
            typer.echo(line)
    if resubmission is not None:
        for line in letters.skipped_lines(resubmission):
            typer.echo(line, err=True)
    if not as_json:
        typer.echo(letters.summary_line(listing, resubmission), err=True)
    if resubmission is not None and not resubmission.complete:
        raise typer.Exit(1)
