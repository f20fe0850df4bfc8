"""A cancelled engine stops, even when the rollback on its way out fails."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg

from collector.db.connector import translated
from collector.engine import Engine, EngineConfig


class LostDatabase:
    """Its queries hang (the server went away mid-query) until ``closed``, and its
    transactions end as asyncpg's do on a lost connection: the rollback on the way out
    raises InterfaceError, which takes the place of a CancelledError. Like every
    Database, it hands asyncpg's errors to the edge's translation."""

    def __init__(self) -> None:
        self.transactions = 0
        self.entered = asyncio.Event()
        self.closed = asyncio.Event()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Any]:
        if self.closed.is_set():
            raise RuntimeError("closed by the test")
        self.transactions += 1
        self.entered.set()
        with translated():
            try:
                yield self
            except BaseException:
                raise asyncpg.InterfaceError("connection is closed") from None

    def __getattr__(self, name: str) -> Any:  # the connection's query methods
        async def hang(*args: object, **kwargs: object) -> None:
            await self.closed.wait()
            raise RuntimeError("closed by the test")

        return hang


async def test_a_cancelled_collection_is_not_retried_as_a_lost_connection() -> None:
    """The worker cancels the engine when its claim is lost; if the cancellation came
    back as a lost connection, the engine would retry, and work on under a claim that
    another worker may hold by now."""
    database = LostDatabase()
    engine = Engine(database, EngineConfig())
    collecting = asyncio.create_task(engine.collect(1, causation_id="c"))
    await database.entered.wait()
    await asyncio.sleep(0.01)  # the other phases' first transactions, begun alongside
    started = database.transactions

    collecting.cancel()
    try:
        await asyncio.wait({collecting}, timeout=5)

        assert collecting.done(), "the engine went on after its cancellation"
        assert collecting.cancelled()
        assert database.transactions == started, "no transaction after the cancellation"
    finally:  # an engine that went on ends now, its error dropped
        database.closed.set()
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(collecting, 5)
