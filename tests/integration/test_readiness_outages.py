"""/readyz of `collector run` and of the blob deleter through outages of PostgreSQL and of
the broker: not ready while either is away, ready again once it is back, without a
restart. Each outage is of a server of the test's own, beside the shared ones: a
PostgreSQL on port 15434 and a broker on 19094, ports no other test uses (the fault
suite's server, on 15433, lives for the whole session)."""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from collector.config import Settings
from collector.db.migrations import migrate
from collector.service import Service
from collector.sinks.blob_deleter import BlobDeleter
from tests.brokers import SpareBroker, running_broker
from tests.pipeline import free_port, pipeline_settings, topics, until
from tests.postgres import SparePostgres
from tests.registry import FixedClock

POSTGRES_PORT = 15434
BROKER_PORT, CONTROLLER_PORT = 19094, 19095
#: A generous bound on each change of state: an outage is noticed within seconds.
WITHIN_S = 90.0


@pytest.fixture(scope="module")
async def spare_postgres() -> AsyncIterator[SparePostgres]:
    """A PostgreSQL of the module's own with a migrated ``registry`` database."""
    # Not under pytest's temporary root: its mode keeps the postgres user out.
    directory = Path(tempfile.mkdtemp(prefix="registry-gc-readiness-"))
    postgres = SparePostgres(directory, POSTGRES_PORT)
    await postgres.up()
    try:
        await postgres.execute("CREATE DATABASE registry")
        conn = await asyncpg.connect(postgres.url("registry"))
        try:
            await migrate(conn)
        finally:
            await conn.close()
        yield postgres
    finally:
        await postgres.down()
        shutil.rmtree(directory)


@pytest.fixture(scope="module")
async def spare_broker(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[SpareBroker]:
    state = tmp_path_factory.mktemp("readiness-broker")
    async with running_broker(state, BROKER_PORT, CONTROLLER_PORT) as broker:
        yield broker


def readiness(port: int) -> dict[str, Any]:
    """What /readyz says, with its HTTP ``status``; nothing while nothing listens yet."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as response:
            status, body = response.status, response.read()
    except urllib.error.HTTPError as exc:
        with exc:
            status, body = exc.code, exc.read()
    except OSError:
        return {}
    answer: dict[str, Any] = json.loads(body)
    return {"status": status, **answer}


async def until_readiness(port: int, holds: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """Wait until /readyz answers something ``holds`` of; return it."""
    seen: dict[str, Any] = {}

    async def answered() -> bool:
        nonlocal seen
        seen = await asyncio.to_thread(readiness, port)
        return bool(seen) and holds(seen)

    await until(answered, within=WITHIN_S)
    return seen


def ready(answer: dict[str, Any]) -> bool:
    return answer["status"] == 200 and answer["ready"] is True


def without(dependency: str) -> Callable[[dict[str, Any]], bool]:
    """Not ready (503), because ``dependency`` is away."""
    return lambda answer: answer["status"] == 503 and answer["checks"][dependency] is False


async def through_outage(
    port: int,
    dependency: str,
    down: Callable[[], Awaitable[None]],
    up: Callable[[], Awaitable[None]],
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """/readyz once ready, once ``dependency`` is down, and once it is up again."""
    before = await until_readiness(port, ready)
    await down()
    try:
        during = await until_readiness(port, without(dependency))
    finally:
        await up()
    after = await until_readiness(port, ready)
    return before, during, after


@asynccontextmanager
async def serving(run: Awaitable[Any], stop: Callable[[], None]) -> AsyncIterator[None]:
    """``run`` as a task for the block; stopped (and its error raised) after it."""
    task = asyncio.ensure_future(run)
    try:
        yield
    finally:
        stop()
        await asyncio.wait_for(task, 60)


def service_settings(database_url: str, **overrides: Any) -> Settings:
    """Topics and groups of the test's own, and a metrics port."""
    group = f"test.blob-deleter.{uuid.uuid4().hex[:12]}"
    return pipeline_settings(
        database_url, metrics_port=free_port(), sink_group_id=group, **overrides
    )


async def test_run_is_not_ready_while_the_database_is_down_and_ready_after(
    spare_postgres: SparePostgres, clock: FixedClock
) -> None:
    """`collector run` with its PostgreSQL stopped: /readyz says 503 with the database
    check false; once the server is back, ready again, every check true."""
    async with topics(service_settings(spare_postgres.url("registry"))) as settings:
        service = Service(settings, clock=clock)
        async with serving(service.run(), service.stop):
            before, during, after = await through_outage(
                settings.metrics_port or 0, "database", spare_postgres.stop, spare_postgres.start
            )

    assert all(before["checks"].values())
    assert during["checks"]["database"] is False
    assert all(after["checks"].values())


async def test_run_is_not_ready_while_the_broker_is_down_and_ready_after(
    database_url: str, spare_broker: SpareBroker, clock: FixedClock
) -> None:
    """`collector run`, idle, with its broker stopped: /readyz says 503 with the broker
    check false (asked of the broker, not waiting for a publication to fail); once the
    broker is back, ready again."""
    overrides = {"kafka_bootstrap": spare_broker.bootstrap, "kafka_produce_timeout_s": 1}
    async with topics(service_settings(database_url, **overrides)) as settings:
        service = Service(settings, clock=clock)
        async with serving(service.run(), service.stop):
            before, during, after = await through_outage(
                settings.metrics_port or 0, "broker", spare_broker.down, spare_broker.up
            )

    assert all(before["checks"].values())
    assert during["checks"]["broker"] is False
    assert all(after["checks"].values())


async def test_the_blob_deleter_is_not_ready_while_the_database_is_down_and_ready_after(
    spare_postgres: SparePostgres, tmp_path: Path
) -> None:
    """A blob deleter with nothing to delete and its PostgreSQL stopped: not ready, the
    database check false; ready again once the server is back."""
    async with topics(service_settings(spare_postgres.url("registry"))) as settings:
        deleter = BlobDeleter(settings, tmp_path)
        async with serving(deleter.run(), deleter.stop):
            before, during, after = await through_outage(
                settings.metrics_port or 0, "database", spare_postgres.stop, spare_postgres.start
            )

    assert all(before["checks"].values())
    assert during["checks"]["database"] is False
    assert all(after["checks"].values())


async def test_the_blob_deleter_is_not_ready_while_the_broker_is_down_and_ready_after(
    database_url: str, spare_broker: SpareBroker, tmp_path: Path
) -> None:
    """A blob deleter with its broker stopped: not ready, the broker check false; ready
    again once the broker is back."""
    async with topics(
        service_settings(database_url, kafka_bootstrap=spare_broker.bootstrap)
    ) as settings:
        deleter = BlobDeleter(settings, tmp_path)
        async with serving(deleter.run(), deleter.stop):
            before, during, after = await through_outage(
                settings.metrics_port or 0, "broker", spare_broker.down, spare_broker.up
            )

    assert all(before["checks"].values())
    assert during["checks"]["broker"] is False
    assert all(after["checks"].values())
