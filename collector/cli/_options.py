"""Options shared by several commands; each names the variable that sets it otherwise."""

from __future__ import annotations

import re
from typing import Annotated, Any

import typer

from collector.limits import BATCH_SIZE, LOG_LEVELS, PLAN_HORIZON_S, REPOSITORY_CONCURRENCY

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


_DURATION = re.compile(r"([0-9]{1,12})([smhd]?)")
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3_600, "d": 86_400}


def _horizon(text: str | int) -> int:
    """Seconds in "7d", "36h", "90m", "3600s" or "3600" (typer parses the default too)."""
    match = _DURATION.fullmatch(str(text).strip())
    if match is None:
        raise typer.BadParameter(f"expected a duration like 7d, 36h, 90m or 3600s, got {text!r}")
    seconds = int(match[1]) * _UNIT_S[match[2]]
    if not PLAN_HORIZON_S[0] <= seconds <= PLAN_HORIZON_S[1]:
        raise typer.BadParameter(f"{text!r} is beyond {PLAN_HORIZON_S[1] // 86_400} days")
    return seconds


Horizon = Annotated[
    int,
    typer.Option(
        metavar="DURATION",
        parser=_horizon,
        help="Also count what falls due this far ahead: 7d, 36h, 90m, 3600s (default 7d).",
        show_default=False,
    ),
]
