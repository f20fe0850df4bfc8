"""What the metrics listener answers besides /metrics: /healthz (the process and its event
loop answer) and /readyz (every readiness check passes), for orchestrators' probes.

The HTTP server runs in a thread of its own; the checks run on the event loop, so
they read the service's state without locks, and a loop that does not answer in time
makes the process unhealthy (a blocked loop is a stuck process, whatever its
threads say).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable, Mapping

import structlog

log = structlog.get_logger(__name__)

#: How long the event loop may take to answer a probe.
PROBE_TIMEOUT_S = 2.0


class Health:
    """Named readiness checks, each a predicate run on ``loop``."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._checks: dict[str, Callable[[], bool]] = {}

    def require(self, name: str, check: Callable[[], bool]) -> None:
        """Make readiness depend on ``check()`` being true."""
        self._checks[name] = check

    def alive(self) -> bool:
        """Whether the event loop runs a callback within the probe timeout (from any
        thread but the loop's)."""
        answered = threading.Event()
        try:
            self._loop.call_soon_threadsafe(answered.set)
        except RuntimeError:  # the loop is closed
            return False
        return answered.wait(PROBE_TIMEOUT_S)

    def readiness(self) -> Mapping[str, bool]:
        """Each check's verdict, evaluated on the loop; all false when it does not answer."""

        async def evaluate() -> dict[str, bool]:
            return {name: bool(check()) for name, check in self._checks.items()}

        if self._loop.is_closed():
            return dict.fromkeys(self._checks, False)
        try:
            future = asyncio.run_coroutine_threadsafe(evaluate(), self._loop)
            return future.result(PROBE_TIMEOUT_S)
        except concurrent.futures.TimeoutError:
            return dict.fromkeys(self._checks, False)
        except Exception as exc:  # a check that fails says "not ready", not a 500
            log.warning("readiness_check_failed", error=repr(exc))
            return dict.fromkeys(self._checks, False)
