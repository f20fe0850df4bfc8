"""The outbox relay against the real PostgreSQL and Kafka: once each, in order, one relay."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
import structlog
from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaConnectionError
from prometheus_client import REGISTRY

from collector.config import Settings
from collector.db.connector import Connection
from collector.engine import Engine
from collector.outbox import store
from collector.outbox.relay import Relay, State, drain
from collector.outbox.store import Removed
from collector.work import queue
from collector.work.queue import WorkItem
from events import CONTENT_TYPE, TagRemoved
from tests.integration.test_kafka import WAIT_S, bootstrap, receive
from tests.pipeline import pipeline_settings, topics, until
from tests.registry import NOW_MS, Registry, at

HEADERS = [("content-type", CONTENT_TYPE.encode())]
KEYS = ("acme/a", "acme/b", "acme/c", "other/d")


@pytest.fixture
async def settings(database_url: str) -> AsyncIterator[Settings]:
    """Settings on the test database and fresh topics (3 partitions), deleted afterwards."""
    async with topics(pipeline_settings(database_url, relay_batch_size=7)) as settings:
        yield settings


async def write_events(conn: Connection, count: int, *, start: int = 0) -> None:
    """``count`` tag-removed events in one transaction, their keys interleaved."""
    removed = [
        Removed(
            TagRemoved(
                namespace=KEYS[i % len(KEYS)].split("/")[0],
                repository=KEYS[i % len(KEYS)].split("/")[1],
                repository_id=i % len(KEYS) + 1,
                tag=f"t{i}",
                tag_id=i,
                manifest_digest="sha256:" + "a" * 64,
            ),
            causation_id="request-1",
        )
        for i in range(start, start + count)
    ]
    async with conn.transaction():
        await store.write(conn, removed, at(NOW_MS))


async def stored(conn: Connection) -> list[asyncpg.Record]:
    """The outbox rows in id order, with the event text exactly as the relay reads it."""
    return await conn.fetch(
        "SELECT id, event_id, key, event::text AS event, published_at FROM gc.outbox ORDER BY id"
    )


async def consume(settings: Settings, count: int, *, settle_s: float = 1.0) -> list[Any]:
    """At least ``count`` records of the removals topic from the start, then ``settle_s`` more."""
    consumer = AIOKafkaConsumer(
        settings.topic_removals,
        bootstrap_servers=bootstrap(),
        group_id=f"test.relay.{uuid.uuid4().hex[:12]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await asyncio.wait_for(consumer.start(), WAIT_S)
    try:
        return await receive(consumer, count, settle_s=settle_s)
    finally:
        await consumer.stop()


class Running:
    """A relay's ``run()`` as a task; stopping it waits for ``run()`` to return."""

    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        self.task = asyncio.create_task(relay.run())

    async def stop(self) -> None:
        self.relay.stop()
        await asyncio.wait_for(self.task, WAIT_S)


@pytest.fixture
async def running() -> AsyncIterator[Callable[[Relay], Running]]:
    """Starts relays; any still running at the end is stopped (and its errors surface)."""
    started: list[Running] = []

    def start(relay: Relay) -> Running:
        started.append(Running(relay))
        return started[-1]

    yield start
    for run in started:
        run.relay.stop()
    for run in started:
        await asyncio.wait_for(run.task, WAIT_S)


def assert_matches(records: list[Any], rows: list[asyncpg.Record]) -> None:
    """Each row went out exactly once as key, exact JSON and header, in id order per key."""
    assert len(records) == len(rows)
    sent = {(r.key, r.value) for r in records}
    assert sent == {(row["key"].encode(), row["event"].encode()) for row in rows}
    assert all(list(r.headers) == HEADERS for r in records)
    for key in {row["key"] for row in rows}:
        in_kafka = [
            json.loads(r.value)["id"]
            for r in sorted(records, key=lambda r: (r.partition, r.offset))
            if r.key == key.encode()
        ]
        assert len({r.partition for r in records if r.key == key.encode()}) == 1
        assert in_kafka == [str(row["event_id"]) for row in rows if row["key"] == key]


async def test_engine_rows_are_published_once_in_order_and_woken_by_notify(
    db: asyncpg.Pool[asyncpg.Record],
    registry: Registry,
    engine: Engine,
    settings: Settings,
    running: Callable[[Relay], Running],
) -> None:
    """What a collection writes goes out within a second of its commit although the relay
    polls only every 30 s (NOTIFY woke it), once each, in id order per key, and is marked."""
    relay = Relay(db, settings.model_copy(update={"relay_poll_interval_s": 30.0}))
    running(relay)
    await until(lambda: relay.state is State.ACTIVE and relay.claims >= 1)
    ns = await registry.namespace("acme")
    for name in ("web", "api"):
        repo = await registry.repository(ns, name)
        layers = tuple([await registry.blob(size=10) for _ in range(3)])
        for n in range(3):
            await registry.expired_tag(repo, await registry.manifest(repo, blobs=layers), f"v{n}")

    started = asyncio.get_running_loop().time()
    for repo in (1, 2):
        await engine.collect(repo, causation_id="request-1")
    rows = await stored(registry.conn)
    assert len(rows) == 2 * (3 + 3 + 3)  # tags, manifests, blobs of each repository
    await until(lambda: relay.published == len(rows), within=5.0)
    assert asyncio.get_running_loop().time() - started < 5.0

    records = await consume(settings, len(rows))
    assert_matches(records, rows)
    assert all(row["published_at"] is not None for row in await stored(registry.conn))
    assert await relay.pending() == 0


async def test_unreachable_broker_leaves_rows_pending_until_a_broker_answers(
    db: asyncpg.Pool[asyncpg.Record],
    registry: Registry,
    settings: Settings,
    running: Callable[[Relay], Running],
) -> None:
    """Without a broker nothing is marked, the relay keeps retrying and logs the outage
    once; a relay with a good broker then publishes the same rows."""
    await write_events(registry.conn, 10)
    broken = Relay(db, settings.model_copy(update={"kafka_bootstrap": "127.0.0.1:1"}))
    with structlog.testing.capture_logs() as logs:
        run = running(broken)
        await until(lambda: broken.publish_failures >= 3)
        assert not run.task.done()
        assert broken.state is State.ACTIVE
        await run.stop()
    events = [entry["event"] for entry in logs]
    assert events.count("broker_unavailable") == 1
    assert "batch_published" not in events
    assert broken.published == 0
    assert await broken.pending() == 10
    assert all(row["published_at"] is None for row in await stored(registry.conn))

    relay = Relay(db, settings)
    running(relay)
    await until(lambda: relay.published == 10)
    rows = await stored(registry.conn)
    assert_matches(await consume(settings, 10), rows)
    assert all(row["published_at"] is not None for row in rows)


async def test_broker_recovery_is_logged_once(
    db: asyncpg.Pool[asyncpg.Record],
    registry: Registry,
    settings: Settings,
    running: Callable[[Relay], Running],
) -> None:
    """A relay whose broker comes back logs broker_recovered once and publishes."""

    class FlakyRelay(Relay):
        failures_left = 2

        async def _start_producer(self) -> Any:
            if self.failures_left:
                self.failures_left -= 1
                raise KafkaConnectionError("broker away (simulated)")
            return await super()._start_producer()

    await write_events(registry.conn, 5)
    relay = FlakyRelay(db, settings)
    with structlog.testing.capture_logs() as logs:
        running(relay)
        await until(lambda: relay.published == 5)
    events = [entry["event"] for entry in logs]
    assert events.count("broker_unavailable") == 1
    assert events.count("broker_recovered") == 1
    assert relay.publish_failures == 2


async def test_two_relays_only_one_publishes_and_the_other_takes_over(
    db: asyncpg.Pool[asyncpg.Record],
    registry: Registry,
    settings: Settings,
    running: Callable[[Relay], Running],
) -> None:
    """Of two relays one publishes, the other stands by; every row goes out once; when
    the active one stops, the other takes over and publishes what comes next."""
    first, second = Relay(db, settings), Relay(db, settings)
    run_first = running(first)
    await until(lambda: first.state is State.ACTIVE)
    running(second)
    await until(lambda: second.state is State.STANDING_BY)

    await write_events(registry.conn, 30)
    await until(lambda: first.published == 30)
    assert second.published == 0
    assert second.state is State.STANDING_BY

    await run_first.stop()
    await until(lambda: second.state is State.ACTIVE)
    await write_events(registry.conn, 12, start=30)
    await until(lambda: second.published == 12)
    assert first.published == 30

    rows = await stored(registry.conn)
    assert len(rows) == 42
    assert_matches(await consume(settings, 42), rows)
    assert await second.pending() == 0


async def test_a_lost_database_session_is_reconnected_and_publishing_resumes(
    db: asyncpg.Pool[asyncpg.Record],
    registry: Registry,
    settings: Settings,
    running: Callable[[Relay], Running],
) -> None:
    """When the server ends the relay's session (lock and LISTEN with it), the relay logs
    it once, reconnects, takes the lock again and publishes what comes next, NOTIFY-woken."""
    relay = Relay(db, settings.model_copy(update={"relay_poll_interval_s": 30.0}))
    with structlog.testing.capture_logs() as logs:
        running(relay)
        await until(lambda: relay.state is State.ACTIVE and relay.claims >= 1)
        await write_events(registry.conn, 4)
        await until(lambda: relay.published == 4, within=5.0)
        ended = await registry.conn.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE application_name = 'collector-relay' AND datname = current_database()"
        )
        assert ended == 1
        await until(lambda: relay.state is not State.ACTIVE)
        await until(lambda: relay.state is State.ACTIVE and relay.claims >= 2)
        await write_events(registry.conn, 4, start=4)
        await until(lambda: relay.published == 8, within=5.0)
    events = [entry["event"] for entry in logs]
    assert events.count("database_unavailable") == 1
    assert events.count("database_recovered") == 1
    assert events.count("relay_activated") == 2
    rows = await stored(registry.conn)
    assert_matches(await consume(settings, 8), rows)


async def test_a_crash_between_produce_and_mark_republishes_with_the_same_ids(
    db: asyncpg.Pool[asyncpg.Record],
    registry: Registry,
    settings: Settings,
    running: Callable[[Relay], Running],
) -> None:
    """A relay dying after the broker acknowledged a batch but before marking it leaves
    the rows pending and propagates the error; the next relay sends them again, same ids."""

    class Crash(Exception):
        pass

    class CrashingRelay(Relay):
        async def _mark(self, conn: Connection, ids: list[int]) -> None:
            raise Crash

    await write_events(registry.conn, 5)
    crashing = CrashingRelay(db, settings)
    with pytest.raises(Crash):
        await asyncio.wait_for(crashing.run(), WAIT_S)
    assert crashing.state is State.STOPPED
    assert await crashing.pending() == 5
    first_time = await consume(settings, 5, settle_s=0.5)
    rows = await stored(registry.conn)
    assert_matches(first_time, rows)

    relay = Relay(db, settings)
    running(relay)
    await until(lambda: relay.published == 5)
    records = await consume(settings, 10)
    ids = [json.loads(r.value)["id"] for r in records]
    assert sorted(ids) == sorted(2 * [str(row["event_id"]) for row in rows])
    assert all(row["published_at"] is not None for row in await stored(registry.conn))


async def test_batches_larger_than_the_batch_size_drain_without_waiting_for_a_poll(
    db: asyncpg.Pool[asyncpg.Record],
    registry: Registry,
    settings: Settings,
    running: Callable[[Relay], Running],
) -> None:
    """A backlog of many batches is published batch after batch, not one batch per poll."""
    await write_events(registry.conn, 50)  # batch size 7: 8 batches
    relay = Relay(db, settings.model_copy(update={"relay_poll_interval_s": 30.0}))
    running(relay)
    await until(lambda: relay.published == 50, within=10.0)
    assert relay.batches == 8
    assert_matches(await consume(settings, 50), await stored(registry.conn))


async def test_the_age_of_the_oldest_unpublished_event_is_measured(
    registry: Registry,
) -> None:
    """What registry_gc_outbox_oldest_age_seconds shows: the oldest event waiting, not
    one published or set aside; 0 when none waits."""
    assert await store.oldest_pending_age(registry.conn) == 0
    await write_events(registry.conn, 3)
    await registry.conn.execute(
        "UPDATE gc.outbox SET created_at = now() - interval '120 seconds' WHERE id ="
        " (SELECT min(id) FROM gc.outbox)"
    )

    assert 120 <= await store.oldest_pending_age(registry.conn) < 180
    await registry.conn.execute(
        "UPDATE gc.outbox SET published_at = now() WHERE id = (SELECT min(id) FROM gc.outbox)"
    )
    assert await store.oldest_pending_age(registry.conn) < 60
    await registry.conn.execute("UPDATE gc.outbox SET undeliverable = 'too large'")
    assert await store.oldest_pending_age(registry.conn) == 0


async def test_prune_deletes_only_published_rows_past_the_retention(
    registry: Registry,
) -> None:
    """prune removes events published before the retention, never pending or recent ones."""
    await write_events(registry.conn, 3)
    ids = [row["id"] for row in await stored(registry.conn)]
    await registry.conn.execute(
        "UPDATE gc.outbox SET published_at = now() - interval '2 days' WHERE id = $1", ids[0]
    )
    await registry.conn.execute("UPDATE gc.outbox SET published_at = now() WHERE id = $1", ids[1])

    assert await store.prune(registry.conn, timedelta(days=1)) == 1
    assert [row["id"] for row in await stored(registry.conn)] == ids[1:]
    assert await store.pending(registry.conn) == 1


async def test_an_event_larger_than_the_broker_takes_is_set_aside_and_the_rest_go_out(
    db: asyncpg.Pool[asyncpg.Record],
    settings: Settings,
    running: Callable[[Relay], Running],
) -> None:
    """A removal of a row holding megabytes (a manifest's media_type, say) cannot be
    published: it used to stop the relay, and the service on every start. It is set aside
    with the reason, the events around it go out, and the relay keeps publishing."""
    huge = Removed(
        TagRemoved(
            namespace="acme",
            repository="a",
            repository_id=1,
            tag="t" * 2_000_000,
            tag_id=99,
            manifest_digest="sha256:" + "a" * 64,
        ),
        causation_id="request-1",
    )
    async with db.acquire() as conn:
        await write_events(conn, 3)
        async with conn.transaction():
            await store.write(conn, [huge], at(NOW_MS))
        await write_events(conn, 3, start=3)
    relay = Relay(db, settings)
    run = running(relay)

    await until(lambda: relay.published == 6)
    async with db.acquire() as conn:
        await write_events(conn, 1, start=6)
        await until(lambda: relay.published == 7)
        rows = await conn.fetch(
            "SELECT id, event_id, key, event::text AS event, published_at, undeliverable"
            " FROM gc.outbox ORDER BY id"
        )
        assert await store.pending(conn) == 0
    records = await consume(settings, 7)

    [aside] = [row for row in rows if row["undeliverable"] is not None]
    assert aside["published_at"] is None
    assert json.loads(aside["event"])["data"]["tag_id"] == 99
    assert "larger than the maximum request size" in aside["undeliverable"]
    assert_matches(records, [row for row in rows if row["undeliverable"] is None])
    assert relay.undeliverable == 1
    assert not run.task.done()


async def removals_of(conn: Connection, causation_id: str, count: int) -> None:
    """``count`` committed tag removals caused by the request ``causation_id``."""
    removed = [
        Removed(
            TagRemoved(
                namespace="acme",
                repository=causation_id,
                repository_id=1,
                tag=f"t{n}",
                tag_id=n,
                manifest_digest="sha256:" + "a" * 64,
            ),
            causation_id=causation_id,
        )
        for n in range(count)
    ]
    async with conn.transaction():
        await store.write(conn, removed, at(NOW_MS))


def published_seconds(sample: str, event_type: str) -> float:
    """A sample of registry_gc_request_published_seconds for requests of ``event_type``."""
    name = f"registry_gc_request_published_seconds_{sample}"
    return REGISTRY.get_sample_value(name, {"type": event_type}) or 0.0


async def test_each_request_is_observed_published_once_whichever_commits_last(
    db: asyncpg.Pool[asyncpg.Record],
    registry: Registry,
    settings: Settings,
    running: Callable[[Relay], Running],
) -> None:
    """registry_gc_request_published_seconds observes each finished request once, from
    its time to when its last event was published: a request finished before its
    events went out (spread over batches of 7, some published by an earlier relay),
    and one finished after they all had (found by a later, empty claim: no race
    between its finish and the relay loses it). Later claims and another relay
    taking over observe nothing more; a request not finished, or that removed
    nothing, is never observed."""
    requested_at = datetime(2020, 1, 1, tzinfo=UTC)
    names = {
        "early": "repo-sweep",
        "late": "repo-deleted",
        "open": "repo-sweep",
        "empty": "repo-deleted",
    }
    items = [
        WorkItem(
            event_id=name,
            event_type=event_type,
            repository_id=n,
            repository_path=f"acme/{name}",
            source="/t",
            requested_at=requested_at,
        )
        for n, (name, event_type) in enumerate(names.items())
    ]
    before = {t: published_seconds("count", t) for t in ("repo-sweep", "repo-deleted")}
    sums = {t: published_seconds("sum", t) for t in ("repo-sweep", "repo-deleted")}
    conn = registry.conn
    await queue.admit(conn, items, NOW_MS)
    rows = await conn.fetch("SELECT event_id, id FROM gc.request")
    ids = {row["event_id"]: row["id"] for row in rows}
    for name, count in (("early", 10), ("late", 10), ("open", 3)):
        await removals_of(conn, name, count)
    for name in ("early", "empty"):
        await queue.finish(conn, ids[name], "collected", "test")
    # An earlier relay published some of early's events before it went away.
    await conn.execute(
        "UPDATE gc.outbox SET published_at = now() WHERE id IN"
        " (SELECT id FROM gc.outbox WHERE causation_id = 'early' ORDER BY id LIMIT 4)"
    )

    relay = Relay(db, settings)
    run = running(relay)
    await until(lambda: relay.published == 10 + 10 + 3 - 4)
    await until(lambda: published_seconds("count", "repo-sweep") == before["repo-sweep"] + 1)
    await queue.finish(conn, ids["late"], "purged", "test")  # its events are all out
    await until(lambda: published_seconds("count", "repo-deleted") == before["repo-deleted"] + 1)
    claims = relay.claims
    await until(lambda: relay.claims >= claims + 3)
    await run.stop()
    successor = Relay(db, settings)
    running(successor)
    await until(lambda: successor.claims >= 3)

    assert {t: published_seconds("count", t) - before[t] for t in before} == {
        "repo-sweep": 1,
        "repo-deleted": 1,
    }
    rows = await conn.fetch(
        """
        SELECT r.event_id, r.events_published_at,
               (SELECT max(published_at) FROM gc.outbox o WHERE o.causation_id = r.event_id)
                   AS last_published_at,
               gc.elapsed_s(r.requested_at, r.events_published_at) AS seconds
        FROM gc.request r
        """
    )
    published = {row["event_id"]: row for row in rows}
    for name in ("early", "late"):
        assert published[name]["events_published_at"] == published[name]["last_published_at"]
        observed = published_seconds("sum", names[name]) - sums[names[name]]
        assert observed == pytest.approx(published[name]["seconds"])
    assert published["open"]["events_published_at"] is None
    assert published["empty"]["events_published_at"] is None


async def test_a_command_s_relay_leaves_requests_to_a_service_s_relay(
    db: asyncpg.Pool[asyncpg.Record],
    registry: Registry,
    settings: Settings,
    running: Callable[[Relay], Running],
) -> None:
    """`collect`'s own relay (drain) publishes a finished request's events but does not
    observe it: its process serves no metrics. A service's relay does, once."""
    item = WorkItem(
        event_id="sweep",
        event_type="repo-sweep",
        repository_id=1,
        repository_path="acme/sweep",
        source="/t",
        requested_at=datetime(2020, 1, 1, tzinfo=UTC),
    )
    before = published_seconds("count", "repo-sweep")
    conn = registry.conn
    await queue.admit(conn, [item], NOW_MS)
    await removals_of(conn, "sweep", 3)
    await queue.finish(conn, await conn.fetchval("SELECT id FROM gc.request"), "collected", "t")

    drained = await drain(db, settings, stall_s=WAIT_S)
    unobserved = await conn.fetchval("SELECT events_published_at IS NULL FROM gc.request")
    relay = Relay(db, settings)
    running(relay)
    await until(lambda: published_seconds("count", "repo-sweep") == before + 1)

    assert (drained.published, drained.waiting) == (3, 0)
    assert unobserved
    assert await conn.fetchval("SELECT events_published_at IS NOT NULL FROM gc.request")
