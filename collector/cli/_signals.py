"""SIGINT and SIGTERM for commands that run to an end: stop, say so, exit 128 + N."""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

SIGNALS = (signal.SIGINT, signal.SIGTERM)
#: What asyncpg's pool says when it rolls back a transaction its task left open.
_RESET_WARNING = "Resetting connection with an active transaction"


class Interrupted(Exception):
    """A command a signal stopped: ``main`` prints the message and exits 128 + signal."""

    def __init__(self, signum: int, message: str = "") -> None:
        self.signum = signum
        self.exit_code = 128 + signum
        super().__init__(message or f"interrupted by {name(signum)}")

    @property
    def signal_name(self) -> str:
        return name(self.signum)


def name(signum: int) -> str:
    """``SIGINT`` for 2."""
    return signal.Signals(signum).name


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)`` where SIGINT or SIGTERM cancels ``main`` and raises
    :class:`Interrupted` once it has unwound (transactions rolled back, connections
    closed); the caller may say what was done and re-raise it with that message."""
    received: list[int] = []

    async def guarded() -> T:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()

        def cancel(signum: int) -> None:
            received.append(signum)
            task.cancel()

        # Signals reach the main thread only (a command run in a thread, as tests do,
        # keeps Python's default handling).
        handled = SIGNALS if threading.current_thread() is threading.main_thread() else ()

        def report(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
            # A transaction the signal cut short in its BEGIN or COMMIT reaches the
            # pool still open; the pool rolls it back, which is what a stop wants.
            if received and context.get("message", "").startswith(_RESET_WARNING):
                return
            loop.default_exception_handler(context)

        loop.set_exception_handler(report)
        for signum in handled:
            loop.add_signal_handler(signum, cancel, signum)
        try:
            return await main
        finally:
            for signum in handled:
                loop.remove_signal_handler(signum)

    try:
        return asyncio.run(guarded())
    except asyncio.CancelledError:
        if not received:
            raise
        raise Interrupted(received[0]) from None
