"""structlog setup: JSON lines off a terminal, readable lines on one, always on stderr."""

from __future__ import annotations

import logging
import sys

import structlog

from collector.errors import ConfigError

LEVELS = ("debug", "info", "warning", "error")


def configure_logging(level: str = "info") -> None:
    if level.lower() not in LEVELS:
        raise ConfigError(f"invalid log level {level!r}: expected one of {', '.join(LEVELS)}")
    processors: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.typing.Processor
    if sys.stderr.isatty():
        renderer = structlog.dev.ConsoleRenderer()
    else:
        processors.append(structlog.processors.format_exc_info)
        renderer = structlog.processors.JSONRenderer()
    structlog.configure(
        processors=[*processors, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
