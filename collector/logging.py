"""structlog setup: JSON lines off a terminal, readable lines on one, always on stderr.

The libraries' own log records (asyncpg's, aiokafka's) are rendered the same way
through the standard library's root logger, from WARNING up, and a message a
library repeats (aiokafka retrying an unreachable broker logs a line per try) is
let through once per ``REPEAT_INTERVAL_S``, with how many copies were dropped.

Each stage binds the request it handles to every line logged meanwhile, the
libraries' included (structlog's contextvars: per task, inherited by the tasks it
starts): ``event_id``, ``causation_id`` and ``repository`` of one request,
``causation_ids`` of several that share the work (:func:`bound_causes`).
"""

from __future__ import annotations

import contextvars
import logging
import math
import sys
import time
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager

import structlog

from collector.errors import ConfigError
from collector.limits import LOG_LEVELS

#: A library's repeated message is shown at most once per this many seconds.
REPEAT_INTERVAL_S = 10.0


def bound_causes(causation_ids: Iterable[str]) -> AbstractContextManager[None]:
    """Bind the requests that some shared work is for (a batch of records, of claimed
    requests, of events) to every line logged meanwhile: ``causation_id`` when the work
    is one request's, ``causation_ids`` (each once, in order) when it is several's."""
    ids = list(dict.fromkeys(causation_ids))
    if len(ids) == 1:
        return structlog.contextvars.bound_contextvars(causation_id=ids[0])
    return structlog.contextvars.bound_contextvars(causation_ids=ids)


def unbound() -> contextvars.Context:
    """The current context without structlog's bindings, for a task started during one
    request that outlives it: a client's background tasks, which serve every later
    request, would otherwise log that one's ids on every line."""
    context = contextvars.copy_context()
    context.run(structlog.contextvars.clear_contextvars)
    return context


class RepeatFilter(logging.Filter):
    """Lets each message (logger and format string) through once per ``interval_s``; the
    next one that passes carries ``suppressed``, the number dropped meanwhile."""

    def __init__(self, interval_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._interval_s = interval_s
        self._clock = clock
        #: (logger, format string) -> (when last let through, dropped since)
        self._seen: dict[tuple[str, str], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, str(record.msg))
        now = self._clock()
        shown, dropped = self._seen.get(key, (-math.inf, 0))
        if now - shown < self._interval_s:
            self._seen[key] = (shown, dropped + 1)
            return False
        self._seen[key] = (now, 0)
        if dropped:
            record.suppressed = dropped
        return True


class _LibraryHandler(logging.StreamHandler):  # type: ignore[type-arg]  # generic in typeshed only
    """The one handler this module puts on the root logger (replaced on reconfiguration)."""


def configure_logging(level: str = "info") -> None:
    if level.lower() not in LOG_LEVELS:
        raise ConfigError(f"invalid log level {level!r}: expected one of {', '.join(LOG_LEVELS)}")
    timestamper = structlog.processors.TimeStamper(fmt="iso", utc=True)
    processors: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        timestamper,
    ]
    rendering: list[structlog.typing.Processor]
    if sys.stderr.isatty():
        rendering = [structlog.dev.ConsoleRenderer()]
    else:
        rendering = [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
    structlog.configure(
        processors=[*processors, *rendering],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    handler = _LibraryHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                structlog.contextvars.merge_contextvars,
                structlog.stdlib.add_logger_name,
                structlog.stdlib.add_log_level,
                structlog.stdlib.ExtraAdder(allow=["suppressed"]),
                timestamper,
            ],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *rendering],
        )
    )
    handler.addFilter(RepeatFilter(REPEAT_INTERVAL_S))
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _LibraryHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    # Libraries' own info and debug lines are theirs to read, not an operator's.
    root.setLevel(max(logging.WARNING, logging.getLevelName(level.upper())))
