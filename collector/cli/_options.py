"""Options shared by several commands; each names the variable that sets it otherwise."""

from __future__ import annotations

from typing import Annotated, Any

import annotated_types
import typer

from collector.config import Settings


def _bounds(field: str) -> dict[str, Any]:
    """The bounds Settings puts on ``field``, for the flag that sets it: out of range, the
    flag is named in the error (the rule itself stays in Settings)."""
    bounds: dict[str, Any] = {}
    for rule in Settings.model_fields[field].metadata:
        if isinstance(rule, annotated_types.Ge):
            bounds["min"] = rule.ge
        elif isinstance(rule, annotated_types.Le):
            bounds["max"] = rule.le
    return bounds


DatabaseUrl = Annotated[
    str | None,
    typer.Option(
        metavar="DSN",
        help="PostgreSQL DSN of the registry  [env var: COLLECTOR_DATABASE_URL]",
        show_default=False,
    ),
]
KafkaBootstrap = Annotated[
    str | None,
    typer.Option(
        metavar="HOST:PORT,…",
        help="Kafka bootstrap servers  [env var: COLLECTOR_KAFKA_BOOTSTRAP]",
        show_default=False,
    ),
]
BatchSize = Annotated[
    int | None,
    typer.Option(
        metavar="N",
        help="Objects decided per transaction  [env var: COLLECTOR_BATCH_SIZE]",
        show_default=False,
        **_bounds("batch_size"),
    ),
]
Concurrency = Annotated[
    int | None,
    typer.Option(
        metavar="N",
        help="Repositories collected at once (run: workers)"
        "  [env var: COLLECTOR_REPOSITORY_CONCURRENCY]",
        show_default=False,
        **_bounds("repository_concurrency"),
    ),
]
LogLevel = Annotated[
    str,
    typer.Option(
        metavar="LEVEL",
        help="debug, info, warning or error",
        envvar="COLLECTOR_LOG_LEVEL",
    ),
]
