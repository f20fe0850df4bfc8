"""Options shared by several commands; each names the variable that sets it otherwise."""

from __future__ import annotations

from typing import Annotated

import typer

DatabaseUrl = Annotated[
    str | None,
    typer.Option(
        help="PostgreSQL DSN of the registry [env: COLLECTOR_DATABASE_URL]", show_default=False
    ),
]
KafkaBootstrap = Annotated[
    str | None,
    typer.Option(
        help="Kafka bootstrap servers [env: COLLECTOR_KAFKA_BOOTSTRAP]", show_default=False
    ),
]
BatchSize = Annotated[
    int | None,
    typer.Option(
        help="Objects decided per transaction [env: COLLECTOR_BATCH_SIZE]", show_default=False
    ),
]
Concurrency = Annotated[
    int | None,
    typer.Option(
        help="Repositories collected at once (run: workers)"
        " [env: COLLECTOR_REPOSITORY_CONCURRENCY]",
        show_default=False,
    ),
]
LogLevel = Annotated[
    str,
    typer.Option(
        help="debug, info, warning or error",
        envvar="COLLECTOR_LOG_LEVEL",
    ),
]
