"""The edge: driver errors translated once, and the one retry, sleep and close."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import pytest
import structlog
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    TopicAuthorizationFailedError,
)

from collector import kafka
from collector.backoff import Retrying, close_quietly, sleep_until, transient
from collector.db.connector import translated
from collector.errors import (
    BrokerUnavailable,
    CollectorError,
    Conflict,
    Contention,
    DatabaseUnavailable,
    RecordTooLarge,
    StorageError,
    Unstorable,
)


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        (ConnectionResetError(104, "reset"), DatabaseUnavailable),
        (asyncpg.InterfaceError("connection is closed"), DatabaseUnavailable),
        (asyncpg.AdminShutdownError("terminating"), DatabaseUnavailable),
        (asyncpg.SerializationError("could not serialize"), Conflict),
        (asyncpg.DeadlockDetectedError("deadlock"), Conflict),
        (asyncpg.ForeignKeyViolationError("fk"), Conflict),
        (asyncpg.StringDataRightTruncationError("too long"), Unstorable),
        (asyncpg.ProgramLimitExceededError("index row too large"), Unstorable),
        (asyncpg.UndefinedTableError("no such table"), StorageError),
    ],
)
async def test_asyncpg_errors_leave_the_database_edge_as_ours(
    raised: BaseException, expected: type[StorageError]
) -> None:
    """Each driver error becomes exactly one of ours, its original kept as the cause;
    the retriable ones are those a later attempt may not meet."""
    with pytest.raises(StorageError) as caught, translated():
        raise raised
    assert type(caught.value) is expected
    assert caught.value.__cause__ is raised
    assert transient(caught.value) == (expected in (DatabaseUnavailable, Conflict))


async def test_a_cancellation_hidden_by_a_lost_connection_stays_a_cancellation() -> None:
    """A task cancelled inside a transaction on a lost connection gets InterfaceError
    from the rollback; the edge gives it back its CancelledError, or the cancelled work
    would be retried as an outage."""

    async def cancelled_mid_transaction() -> None:
        with translated():
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                raise asyncpg.InterfaceError("connection is closed") from None

    task = asyncio.create_task(cancelled_mid_transaction())
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


@pytest.mark.parametrize(
    ("raised", "expected", "retriable"),
    [
        (KafkaConnectionError("no broker"), BrokerUnavailable, True),
        (KafkaTimeoutError("no acknowledgement"), BrokerUnavailable, True),
        (MessageSizeTooLargeError("2 MB"), RecordTooLarge, False),
        (TopicAuthorizationFailedError("not allowed"), CollectorError, False),
    ],
)
def test_aiokafka_errors_leave_the_kafka_edge_as_ours(
    raised: BaseException, expected: type[CollectorError], retriable: bool
) -> None:
    with pytest.raises(CollectorError) as caught, kafka.translated("publish to t"):
        raise raised
    assert type(caught.value) is expected
    assert caught.value.__cause__ is raised
    assert str(caught.value).startswith("cannot publish to t: ")
    assert transient(caught.value) is retriable


def test_only_our_errors_marked_retriable_are_transient() -> None:
    assert transient(Contention())
    assert not transient(StorageError())
    assert not transient(OSError("a raw driver error is translated first"))


async def test_sleep_until_returns_early_when_the_event_is_set() -> None:
    event = asyncio.Event()
    asyncio.get_running_loop().call_later(0.05, event.set)
    started = time.monotonic()
    assert await sleep_until(event, 30) is True
    assert time.monotonic() - started < 10
    assert await sleep_until(asyncio.Event(), 0.01) is False


async def test_close_quietly_logs_a_failed_close_instead_of_raising() -> None:
    async def failing_stop() -> None:
        raise KafkaConnectionError("gone")

    with structlog.testing.capture_logs() as logs:
        await close_quietly(failing_stop(), "producer")
    assert [entry["event"] for entry in logs] == ["producer_stop_failed"]
    assert "gone" in logs[0]["error"]


async def test_retrying_waits_out_transient_errors_and_raises_the_others() -> None:
    """call() redoes an attempt that met an outage, logging the outage once and its end
    once; an error that waiting will not change is raised at once."""
    attempts: list[str] = []

    async def flaky() -> str:
        attempts.append("try")
        if len(attempts) < 3:
            raise DatabaseUnavailable("away")
        return "done"

    retrying = Retrying("database", first=0.001, cap=0.001)
    with structlog.testing.capture_logs() as logs:
        assert await retrying.call(flaky) == "done"
    assert len(attempts) == 3
    assert [entry["event"] for entry in logs] == ["database_unavailable", "database_recovered"]

    async def refused() -> None:
        raise Unstorable("no")

    with pytest.raises(Unstorable):
        await retrying.call(refused)


async def test_retrying_gives_up_on_an_outage_once_stopping() -> None:
    stopping = asyncio.Event()
    stopping.set()

    async def away() -> None:
        raise BrokerUnavailable("away")

    with pytest.raises(BrokerUnavailable):
        await Retrying("broker", stopping).call(away)
