"""How the collector waits and tries again, written once for every stage.

- :class:`Backoff`: capped, jittered, exponential delays.
- :class:`Outage`: one dependency's availability, logged and counted once per outage.
- :class:`Retrying`: both together, for a stage that waits out what a later attempt
  may not meet (an error of ours marked ``retriable``) and gives up on anything else.
- :func:`sleep_until`: the one interruptible sleep; :func:`close_quietly`: the one
  bounded close of a client on the way out.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import threading
import weakref
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import ClassVar, TypeVar

import structlog

from collector import metrics
from collector.errors import CollectorError

T = TypeVar("T")
log = structlog.get_logger(__name__)

#: How long closing a client (a Kafka producer or consumer) may take on the way out.
CLOSE_TIMEOUT_S = 10.0


def transient(error: BaseException) -> bool:
    """Whether a later attempt may not meet ``error``: an error of ours marked
    ``retriable`` (a dependency away, a race lost too often). Driver errors are
    translated into ours at the edges (``db.connector``, ``kafka``), so this is the
    one test every stage applies."""
    return isinstance(error, CollectorError) and error.retriable


async def sleep_until(event: asyncio.Event, seconds: float) -> bool:
    """Sleep ``seconds``, or less if ``event`` is set meanwhile; whether it is set."""
    if not event.is_set():
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await event.wait()
    return event.is_set()


async def close_quietly(closing: Awaitable[object], what: str) -> None:
    """Await ``closing`` (a client's ``stop()``) for at most :data:`CLOSE_TIMEOUT_S`.
    A failure is logged as ``<what>_stop_failed``, not raised: closing on the way out
    must not hide the error that led there."""
    try:
        await asyncio.wait_for(closing, CLOSE_TIMEOUT_S)
    except Exception as exc:  # TimeoutError included
        log.warning(f"{what}_stop_failed", error=repr(exc))


class Backoff:
    """Delays that double from ``first`` up to ``cap``, each jittered by ±``jitter``
    so that many waiting clients do not come back at the same instant."""

    def __init__(self, first: float = 0.2, cap: float = 5.0, jitter: float = 0.25) -> None:
        self._next = first
        self._cap = cap
        self._jitter = jitter

    def next(self) -> float:
        delay = self._next * random.uniform(1 - self._jitter, 1 + self._jitter)
        self._next = min(self._next * 2, self._cap)
        return delay

    def at_least(self, floor: float) -> None:
        """Make the next delay no shorter than ``floor``."""
        self._next = max(self._next, floor)


class Outage:
    """One dependency's availability, for the logs and metrics: ``failed`` and
    ``recovered`` act only when it changes, so an outage is one warning and one info
    line however many retries it takes (``<what>_unavailable``, ``<what>_recovered``),
    and counts once in ``registry_gc_unavailable`` while it lasts. An outage whose
    waiter is gone (a stage stopped, a loop left, while it lasted) stops counting."""

    #: How many outages of each dependency are being waited out now, in this process.
    _current: ClassVar[Counter[str]] = Counter()
    #: The collector may end an outage in whatever thread it runs.
    _lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, what: str) -> None:
        self._what = what
        self._ended: Callable[[], object] | None = None

    @property
    def down(self) -> bool:
        return self._ended is not None

    @classmethod
    def available(cls, what: str) -> bool:
        """Whether no stage of this process is waiting out an outage of ``what`` now."""
        return cls._current[what] <= 0

    def failed(self, error: BaseException) -> None:
        if not self.down:
            with Outage._lock:
                Outage._current[self._what] += 1
            metrics.UNAVAILABLE.labels(self._what).inc()
            metrics.OUTAGES.labels(self._what).inc()
            # Run by recovered(), or when this object is collected while down.
            self._ended = weakref.finalize(self, Outage._end, self._what)
            log.warning(f"{self._what}_unavailable", error=repr(error))

    def recovered(self) -> bool:
        """Log the end of an outage; True if there was one."""
        if self._ended is None:
            return False
        ended, self._ended = self._ended, None
        ended()
        log.info(f"{self._what}_recovered")
        return True

    @staticmethod
    def _end(what: str) -> None:
        with Outage._lock:
            Outage._current[what] -= 1
        metrics.UNAVAILABLE.labels(what).dec()


async def reach(
    connect: Callable[[], Awaitable[T]],
    *,
    errors: tuple[type[BaseException], ...],
    wait_s: float,
    unavailable: Callable[[str], CollectorError],
    event: str,
) -> T:
    """``connect()``, retried with backoff while it fails with ``errors``, for up to
    ``wait_s`` seconds; then ``unavailable(reason)`` is raised."""
    backoff, waited = Backoff(), 0.0
    while True:
        try:
            return await connect()
        except errors as exc:
            if waited >= wait_s:
                raise unavailable(str(exc)) from exc
            delay = backoff.next()
            log.warning(event, error=str(exc), retry_in_s=round(delay, 2))
            await asyncio.sleep(delay)
            waited += delay


class Retrying:
    """How one stage waits out one dependency (``what``: database, broker, storage).

    :meth:`failed` marks the outage (one warning, see :class:`Outage`) and sleeps the
    next backoff delay, cut short by ``stopping``; :meth:`succeeded` ends the outage
    and starts the delays over. :meth:`call` does both around one attempt.
    """

    def __init__(
        self,
        what: str,
        stopping: asyncio.Event | None = None,
        *,
        first: float = 0.2,
        cap: float = 5.0,
    ) -> None:
        self.outage = Outage(what)
        self._stopping = stopping or asyncio.Event()
        self._delays = functools.partial(Backoff, first, cap)
        self._backoff = self._delays()

    async def failed(self, error: BaseException) -> bool:
        """Record ``error`` and wait before the next attempt; whether the stage is
        stopping (then the caller gives up, and says why)."""
        self.outage.failed(error)
        return await sleep_until(self._stopping, self._backoff.next())

    def succeeded(self) -> bool:
        """End an outage in progress; whether there was one."""
        if recovered := self.outage.recovered():
            self._backoff = self._delays()
        return recovered

    async def call(self, attempt: Callable[[], Awaitable[T]]) -> T:
        """``attempt()`` until it returns, waiting out :func:`transient` errors; any
        other error, and a transient one met while stopping, is raised."""
        while True:
            try:
                result = await attempt()
            except CollectorError as exc:
                if not transient(exc) or await self.failed(exc):
                    raise
                continue
            self.succeeded()
            return result
