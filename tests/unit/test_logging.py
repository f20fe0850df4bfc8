"""Logs off a terminal are JSON lines only: the libraries' records too, and a message a
library repeats in a loop is let through once per interval with a count of the rest."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError

from collector.logging import RepeatFilter, configure_logging

pytestmark = pytest.mark.usefixtures("restore_logging")


def json_lines(stderr: str) -> list[dict[str, Any]]:
    """Every line of ``stderr``, each of which must be a JSON object."""
    return [json.loads(line) for line in stderr.splitlines()]


def test_a_library_warning_with_a_traceback_is_one_json_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """asyncpg's pool warning with its traceback, as seen during PostgreSQL outages, is one
    JSON object with the logger, the level and the exception inside."""
    configure_logging("info")
    try:
        raise ConnectionRefusedError(111, "Connect call failed")
    except ConnectionRefusedError:
        logging.getLogger("asyncpg.pool").warning(
            "Failed to restore the pool connection floor; retrying", exc_info=True
        )

    (line,) = json_lines(capsys.readouterr().err)
    assert line["event"] == "Failed to restore the pool connection floor; retrying"
    assert line["logger"] == "asyncpg.pool"
    assert line["level"] == "warning"
    assert "ConnectionRefusedError" in line["exception"]
    assert "timestamp" in line


def test_a_message_repeated_in_a_loop_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    """aiokafka retrying an unreachable broker: a thousand copies of one message (with
    different arguments) make one line; another message is not held back by it."""
    configure_logging("info")
    conn = logging.getLogger("aiokafka.conn")
    for attempt in range(1000):
        conn.error("Unable connect to %r: %s", "127.0.0.1:1", f"attempt {attempt}")
    logging.getLogger("aiokafka.cluster").error("Unable to update metadata from %s", [1])

    lines = json_lines(capsys.readouterr().err)
    assert [line["logger"] for line in lines] == ["aiokafka.conn", "aiokafka.cluster"]
    assert lines[0]["event"] == "Unable connect to '127.0.0.1:1': attempt 0"


def test_the_next_interval_s_line_says_how_many_copies_were_dropped() -> None:
    """Once the interval has passed, the message goes through again, carrying the number
    of copies dropped meanwhile; then the count starts over."""
    now = [0.0]
    repeats = RepeatFilter(10.0, clock=lambda: now[0])

    def record(attempt: int) -> logging.LogRecord:
        return logging.LogRecord(
            "aiokafka.conn", logging.ERROR, "", 0, "Unable %s", (attempt,), None
        )

    passed = [repeats.filter(record(n)) for n in range(5)]
    now[0] = 10.0
    later = record(5)
    again = record(6)

    assert passed == [True, False, False, False, False]
    assert repeats.filter(later)
    assert later.__dict__["suppressed"] == 4
    assert not repeats.filter(again)


def test_libraries_info_lines_stay_out_and_ours_stay_in(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A library's info line is below the operator's view; the collector's own info events
    are not."""
    configure_logging("info")
    logging.getLogger("aiokafka.consumer.group_coordinator").info("Joined group")
    structlog.get_logger("collector.test").info("batch_committed", offsets=3)

    (line,) = json_lines(capsys.readouterr().err)
    assert line["event"] == "batch_committed"
    assert line["offsets"] == 3


def test_reconfiguring_keeps_one_library_handler(capsys: pytest.CaptureFixture[str]) -> None:
    """Configuring twice (a command that reconfigures) prints each record once."""
    configure_logging("info")
    configure_logging("warning")
    logging.getLogger("asyncpg").warning("once")

    assert [line["event"] for line in json_lines(capsys.readouterr().err)] == ["once"]


async def test_aiokafka_failing_to_reach_a_broker_logs_json_lines_only(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """aiokafka itself, failing to bootstrap (nothing listens on port 1), logs its
    `Unable connect to "127.0.0.1:1"` through our handler: JSON, nothing in plain text
    in between, and the reason in the line."""
    configure_logging("info")
    producer = AIOKafkaProducer(bootstrap_servers="127.0.0.1:1", request_timeout_ms=1000)
    with pytest.raises(KafkaConnectionError):
        await producer.start()
    await producer.stop()

    lines = json_lines(capsys.readouterr().err)
    connects = [line for line in lines if line["logger"].startswith("aiokafka")]
    assert connects, lines
    assert any('Unable connect to "127.0.0.1:1"' in line["event"] for line in connects)
    assert {line["level"] for line in connects} <= {"warning", "error"}


def test_a_library_line_carries_the_request_bound_where_it_is_logged(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """asyncpg's or aiokafka's record, logged while a stage handles a request, names that
    request like the stage's own lines do; logged after, it names none."""
    configure_logging("info")
    with structlog.contextvars.bound_contextvars(
        event_id="request-1", causation_id="request-1", repository="acme/web"
    ):
        logging.getLogger("asyncpg.pool").warning("Failed to restore the pool connection floor")
    logging.getLogger("aiokafka.conn").warning("Unable connect to %r", "127.0.0.1:1")

    during, after = json_lines(capsys.readouterr().err)
    assert (during["event_id"], during["causation_id"], during["repository"]) == (
        "request-1",
        "request-1",
        "acme/web",
    )
    assert during["logger"] == "asyncpg.pool"
    assert "event_id" not in after
