"""Backoff delays and the reach() retry loop."""

from __future__ import annotations

import pytest
import structlog
from prometheus_client import REGISTRY

from collector.backoff import Backoff, Outage, reach
from collector.errors import DatabaseUnavailable


def test_delays_double_up_to_the_cap_within_jitter() -> None:
    """Each delay is the doubled previous one (capped), give or take the jitter."""
    backoff = Backoff(first=1.0, cap=8.0, jitter=0.25)
    delays = [backoff.next() for _ in range(6)]
    for delay, nominal in zip(delays, [1, 2, 4, 8, 8, 8], strict=True):
        assert nominal * 0.75 <= delay <= nominal * 1.25


def test_at_least_raises_the_next_delay() -> None:
    """at_least() lifts a short next delay to the floor, jitter aside."""
    backoff = Backoff(first=0.05, cap=5.0, jitter=0.0)
    backoff.at_least(0.5)
    assert backoff.next() == 0.5
    assert backoff.next() == 1.0


@pytest.fixture
def slept(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Records reach()'s sleeps instead of sleeping."""
    delays: list[float] = []

    async def fake_sleep(delay: float) -> None:
        delays.append(delay)

    monkeypatch.setattr("collector.backoff.asyncio.sleep", fake_sleep)
    return delays


async def test_reach_retries_listed_errors_until_success(slept: list[float]) -> None:
    """Listed errors are retried with growing delays; the first success is returned."""
    outcomes: list[Exception | str] = [OSError("refused"), OSError("refused"), "pool"]

    async def connect() -> str:
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    result = await reach(
        connect, errors=(OSError,), wait_s=30, unavailable=DatabaseUnavailable, event="x"
    )
    assert result == "pool"
    assert len(slept) == 2
    assert slept[1] > slept[0]


async def test_reach_gives_up_after_the_wait_with_the_unavailable_error(
    slept: list[float],
) -> None:
    """Past wait_s, the error built by `unavailable` is raised, chained to the last one."""

    async def connect() -> str:
        raise OSError("connection refused")

    with pytest.raises(DatabaseUnavailable, match="connection refused") as raised:
        await reach(
            connect, errors=(OSError,), wait_s=1.0, unavailable=DatabaseUnavailable, event="x"
        )
    assert isinstance(raised.value.__cause__, OSError)
    assert sum(slept) >= 1.0


async def test_reach_does_not_retry_other_errors(slept: list[float]) -> None:
    """An error not listed (e.g. a malformed DSN) surfaces at once."""

    async def connect() -> str:
        raise ValueError("invalid DSN")

    with pytest.raises(ValueError, match="invalid DSN"):
        await reach(
            connect, errors=(OSError,), wait_s=30, unavailable=DatabaseUnavailable, event="x"
        )
    assert slept == []


def test_an_outage_is_logged_once_when_it_starts_and_once_when_it_ends() -> None:
    """However many failures an outage has, it is one warning and one recovery line;
    recovering without an outage logs nothing and says so."""
    outage = Outage("database")

    def unavailable() -> float:
        return REGISTRY.get_sample_value("registry_gc_unavailable", {"dependency": "database"}) or 0

    before = unavailable()
    with structlog.testing.capture_logs() as logs:
        assert outage.recovered() is False
        for _ in range(3):
            outage.failed(OSError("refused"))
        assert outage.down
        assert unavailable() == before + 1  # one stage, one outage
        assert outage.recovered() is True
        assert outage.recovered() is False
    assert unavailable() == before
    assert [(e["event"], e["log_level"]) for e in logs] == [
        ("database_unavailable", "warning"),
        ("database_recovered", "info"),
    ]
