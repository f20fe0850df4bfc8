"""In-process hooks run after a removal has committed.

The descendants of Quay's ``repo_cleanup_callbacks`` and
``image_cleanup_callbacks``: register an async function for a removal type
(or for :class:`events.Removal` to see every removal)::

    callbacks = Callbacks()
    callbacks.on(RepoPurged, drop_repository_from_search_index)
    callbacks.on(LegacyImageRemoved, forget_security_scan)

A callback receives the removal and the id of the request that caused it.
It runs after the deleting transaction committed, so it can never undo a
removal; an exception it raises stops the run and reaches the caller (the
work left is durable and a rerun finishes it, without calling back twice
for what already committed).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from collector.outbox.store import Removed
from events import Removal

R = TypeVar("R", bound=Removal)
Callback = Callable[[R, str], Awaitable[None]]


class Callbacks:
    def __init__(self) -> None:
        self._callbacks: list[tuple[type[Removal], Callback[Removal]]] = []

    def on(self, removal_type: type[R], callback: Callback[R]) -> None:
        self._callbacks.append((removal_type, callback))  # type: ignore[arg-type]  # narrowed by isinstance at dispatch

    async def dispatch(self, removed: Removed) -> None:
        for removal_type, callback in self._callbacks:
            if isinstance(removed.removal, removal_type):
                await callback(removed.removal, removed.causation_id)
