"""Options shared by several commands; each names the variable that sets it otherwise."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from collector.limits import BATCH_SIZE, LOG_LEVELS, REPOSITORY_CONCURRENCY

#: The log level of `demo` unless the flag or COLLECTOR_LOG_LEVEL says otherwise: its
#: progress is what it shows.
DEMO_LOG_LEVEL = "warning"

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
        min=BATCH_SIZE[0],
        max=BATCH_SIZE[1],
    ),
]
Concurrency = Annotated[
    int | None,
    typer.Option(
        metavar="N",
        help="Repositories collected at once (run: workers)"
        "  [env var: COLLECTOR_REPOSITORY_CONCURRENCY]",
        show_default=False,
        min=REPOSITORY_CONCURRENCY[0],
        max=REPOSITORY_CONCURRENCY[1],
    ),
]


def _known_log_level(value: str | None) -> str | None:
    # The flag's own check, naming the flag; the settings check COLLECTOR_LOG_LEVEL.
    if value is not None and value.lower() not in LOG_LEVELS:
        raise typer.BadParameter(
            f"invalid log level {value!r}: expected one of {', '.join(LOG_LEVELS)}"
        )
    return value


def _log_level(default: str) -> Any:
    """--log-level, its help naming the command's default."""
    return typer.Option(
        metavar="LEVEL",
        help=f"debug, info, warning or error (default {default})  [env var: COLLECTOR_LOG_LEVEL]",
        show_default=False,
        callback=_known_log_level,
    )


LogLevel = Annotated[str | None, _log_level("info")]
DemoLogLevel = Annotated[str | None, _log_level(DEMO_LOG_LEVEL)]
MetricsPort = Annotated[
    int | None,
    typer.Option(
        min=1,
        max=65535,
        metavar="PORT",
        help="Serve Prometheus metrics on 127.0.0.1:PORT/metrics, and the probes /healthz"
        " and /readyz (address: COLLECTOR_METRICS_ADDRESS)  [env var: COLLECTOR_METRICS_PORT]",
        show_default=False,
    ),
]
