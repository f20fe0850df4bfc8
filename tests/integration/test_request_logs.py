"""Every line of a request's handling names it: the intake, the workers and the relay bind
its ids with structlog's contextvars (docs/operations.md, Logs), and requests handled at
the same time never carry each other's."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Iterator, MutableMapping
from typing import Any

import asyncpg
import pytest
import structlog

from collector.config import Settings
from collector.dead_letters import DeadLetters
from collector.engine import Callbacks, Engine
from collector.intake.consumer import Intake
from collector.outbox import store
from collector.outbox.relay import Relay
from collector.outbox.store import Removed
from collector.work import queue
from collector.work.queue import WorkItem
from collector.work.worker import Workers
from events import Removal, RepoSweep, TagRemoved
from tests.integration.test_service import run_service
from tests.pipeline import (
    WAIT_S,
    Record,
    pipeline_settings,
    produce,
    read_topic,
    request,
    topics,
    undecodable_record,
    until,
)
from tests.registry import NOW_MS, WINDOW_S, FixedClock, Registry, at

Line = MutableMapping[str, Any]

#: What the fixture's repositories are called.
PATHS = {"web": "acme/web", "poison": "acme/poison", "ops": "acme/ops", "api": "acme/api"}


@pytest.fixture
def logs(restore_logging: None) -> list[Line]:
    """Every structlog line from now on, debug ones included, with what is bound to it."""
    capture = structlog.testing.LogCapture()
    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars, capture],
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
    )
    return capture.entries


@pytest.fixture
async def settings(database_url: str) -> AsyncIterator[Settings]:
    async with topics(pipeline_settings(database_url, relay_batch_size=10)) as settings:
        yield settings


def mentions(line: Line, request_id: str) -> bool:
    """Whether ``line`` is about the request ``request_id``: the jq filter of
    docs/operations.md, in Python."""
    return line.get("causation_id") == request_id or request_id in line.get("causation_ids", ())


def requests_named(line: Line) -> set[str]:
    """Every request id a line carries, in any of the fields the stages bind."""
    single = {line[key] for key in ("causation_id", "event_id") if key in line}
    return single | set(line.get("causation_ids", ())) | set(line.get("event_ids", ()))


def the(logs: list[Line], event: str, **fields: Any) -> Line:
    """The one line of ``event`` whose fields include ``fields``."""
    [line] = [
        entry
        for entry in logs
        if entry["event"] == event and all(entry.get(k) == v for k, v in fields.items())
    ]
    return line


def request_id(record: Record) -> str:
    event_id: str = json.loads(record.value or b"")["id"]
    return event_id


async def test_a_request_is_named_on_its_lines_from_the_intake_to_the_relay(
    db: asyncpg.Pool[asyncpg.Record],
    registry: Registry,
    settings: Settings,
    clock: FixedClock,
    logs: list[Line],
) -> None:
    """A sweep that removes and publishes, a request for a repository the registry does
    not have, and a record that is no request: the intake's lines name each record's
    request as far as it could be read (event id, causation id, source, repository) and
    its position; the worker's and the relay's name the sweep; every removal event is
    named on its own line, with its cause."""
    acme = await registry.namespace("acme")
    web = await registry.repository(acme, "web")
    await registry.expired_tag(web, await registry.manifest(web))
    sweep = request(RepoSweep(namespace="acme", repository="web", repository_id=web))
    ghost = request(RepoSweep(namespace="acme", repository="ghost", repository_id=web + 99))
    junk = Record(b"acme/junk", b"{")
    await produce(settings.topic_requests, [sweep, ghost, junk])

    summary = await run_service(settings, clock)

    assert summary.outcomes == {"collected": 1}
    swept, refused = request_id(sweep), request_id(ghost)
    accepted = the(logs, "request_accepted")
    assert accepted["event_id"] == accepted["causation_id"] == swept
    assert (accepted["repository"], accepted["source"]) == ("acme/web", "/tests")
    assert accepted["topic"] == settings.topic_requests
    assert {"partition", "offset"} <= accepted.keys()
    unknown = the(logs, "request_refused", reason="unknown-repository")
    assert unknown["event_id"] == unknown["causation_id"] == refused
    assert unknown["repository"] == "acme/ghost"
    unreadable = the(logs, "request_refused", reason="malformed-json")
    assert unreadable["repository"] == "acme/junk"
    assert "event_id" not in unreadable
    assert "causation_id" not in unreadable
    [letter] = [
        r
        for r in await read_topic(settings.topic_dead_letter, partitions=1)
        if r.key == b"acme/junk"
    ]
    assert unreadable["offset"] == letter.event["data"]["offset"]

    followed = [line["event"] for line in logs if mentions(line, swept)]
    for event in (
        "request_accepted",
        "requests_claimed",
        "collection_started",
        "request_finished",
        "batch_published",
    ):
        assert event in followed
    finished = the(logs, "request_finished")
    assert (finished["event_id"], finished["repository"], finished["type"]) == (
        swept,
        "acme/web",
        "repo-sweep",
    )
    removals = await read_topic(settings.topic_removals)
    published = {
        line["event_id"]: line["causation_id"]
        for line in logs
        if line["event"] == "event_published"
    }
    assert published == {removal.event["id"]: swept for removal in removals}
    assert [line["event"] for line in logs if mentions(line, refused)] == ["request_refused"]


async def test_a_record_waiting_for_the_database_is_named_on_the_outage_line(
    settings: Settings, clock: FixedClock, logs: list[Line]
) -> None:
    """An intake whose database cannot be reached (nothing listens on port 1) while it
    admits a record logs the outage once, naming the request that waits on it."""
    sweep = request(RepoSweep(namespace="acme", repository="web", repository_id=1))
    await produce(settings.topic_requests, [sweep])
    unreachable = await asyncpg.create_pool("postgresql://postgres@127.0.0.1:1/none", min_size=0)
    intake = Intake(
        settings,
        unreachable,
        clock=clock,
        on_admitted=lambda: None,
        dead_letters=DeadLetters(settings, asyncio.Event()),
    )
    running = asyncio.create_task(intake.run())
    try:
        await until(lambda: any(line["event"] == "database_unavailable" for line in logs))
    finally:
        intake.stop()
        await asyncio.wait_for(running, WAIT_S)
        await unreachable.close()

    outage = the(logs, "database_unavailable")
    assert outage["causation_id"] == request_id(sweep)
    assert outage["topic"] == settings.topic_requests


async def test_a_worker_names_each_request_on_its_lines_and_the_batch_on_shared_ones(
    db: asyncpg.Pool[asyncpg.Record],
    registry: Registry,
    engine: Engine,
    callbacks: Callbacks,
    settings: Settings,
    clock: FixedClock,
    logs: list[Line],
) -> None:
    """Three requests claimed together: a sweep, a sweep whose removals make the run fail
    (a callback raising: a stand-in for any row the collector cannot handle) and an
    expiry of a tag still inside its window. The claim, the failed batch and their
    collection name the requests they are for; then each request's own lines (its
    collection, deferral, failure and dead letter, its end) carry its event id, causation
    id, repository and type, and no other request's."""
    acme = await registry.namespace("acme")
    ids = {name: await registry.repository(acme, name) for name in ("web", "poison", "ops")}
    for name in ("web", "poison"):
        await registry.expired_tag(ids[name], await registry.manifest(ids[name]))
    end_ms = clock.ms - WINDOW_S * 1000 + 60_000  # due in a minute
    rc = await registry.tag(ids["ops"], await registry.manifest(ids["ops"]), "rc", end_ms=end_ms)

    def item(name: str, event_type: str, offset: int, **fields: Any) -> WorkItem:
        return WorkItem(
            source="/tests",
            event_id=f"request-{name}",
            event_type=event_type,
            repository_id=ids[name],
            repository_path=PATHS[name],
            record_topic=settings.topic_requests,
            record_partition=0,
            record_offset=offset,
            **fields,
        )

    items = [
        item("web", "repo-sweep", 0),
        item("poison", "repo-sweep", 1),
        item("ops", "tag-expired", 2, tag_id=rc, lifetime_end_ms=end_ms),
    ]
    async with db.acquire() as conn:
        await queue.admit(conn, items, clock.now_ms())

    async def fail_on_poison(removal: Removal, causation_id: str) -> None:
        if causation_id == "request-poison":
            raise ValueError("cannot process this repository")

    callbacks.on(Removal, fail_on_poison)
    dead_letters = DeadLetters(settings, asyncio.Event())
    workers = Workers(
        db, engine, clock, settings.model_copy(update={"repository_concurrency": 1}), dead_letters
    )
    running = asyncio.create_task(workers.run())
    try:
        await until(lambda: workers.deferred == 1 and sum(workers.outcomes.values()) == 2)
    finally:
        workers.stop()
        await asyncio.wait_for(running, WAIT_S)
        await dead_letters.stop()

    assert workers.outcomes == {"collected": 1, "failed": 1}
    every = ["request-web", "request-poison", "request-ops"]
    assert the(logs, "requests_claimed")["causation_ids"] == every
    assert the(logs, "batch_failed")["causation_ids"] == every
    together = next(line for line in logs if line["event"] == "collection_started")
    assert together["causation_ids"] == ["request-web", "request-poison"]
    for name, ending in [
        ("web", "request_finished"),
        ("poison", "request_failed"),
        ("poison", "request_refused"),
        ("ops", "request_deferred"),
    ]:
        line = the(logs, ending, event_id=f"request-{name}")
        assert line["causation_id"] == f"request-{name}", line
        assert line["repository"] == PATHS[name], line
        assert line["type"] == ("tag-expired" if name == "ops" else "repo-sweep"), line
    alone = [
        line for line in logs if line["event"] == "collection_started" and "causation_id" in line
    ]
    assert [line["causation_id"] for line in alone] == ["request-web", "request-poison"]
    for line in logs:
        if "repository" in line and len(requests_named(line)) == 1:
            [named] = requests_named(line)
            assert line["repository"] == PATHS[named.removeprefix("request-")], line


async def test_requests_handled_at_the_same_time_never_carry_each_other_s_ids(
    db: asyncpg.Pool[asyncpg.Record],
    registry: Registry,
    engine: Engine,
    callbacks: Callbacks,
    settings: Settings,
    clock: FixedClock,
    logs: list[Line],
) -> None:
    """Two workers, each in the middle of its own request when the other's removals
    commit (both wait for each other there): every line either logs, its engine's and a
    removal callback's included, names its own request and repository alone."""
    acme = await registry.namespace("acme")
    items = []
    for name in ("web", "api"):
        repository = await registry.repository(acme, name)
        await registry.expired_tag(repository, await registry.manifest(repository))
        items.append(
            WorkItem(
                source="/tests",
                event_id=f"request-{name}",
                event_type="repo-sweep",
                repository_id=repository,
                repository_path=PATHS[name],
            )
        )
    async with db.acquire() as conn:
        await queue.admit(conn, items, clock.now_ms())
    both = asyncio.Barrier(2)
    met: set[str] = set()

    async def meet(removal: Removal, causation_id: str) -> None:
        structlog.get_logger("tests").info("removal_seen", cause=causation_id)
        if causation_id not in met:  # each request's first removal waits for the other's
            met.add(causation_id)
            await both.wait()

    callbacks.on(Removal, meet)
    side_by_side = settings.model_copy(update={"repository_concurrency": 2, "work_batch_size": 1})
    workers = Workers(db, engine, clock, side_by_side, DeadLetters(settings, asyncio.Event()))
    running = asyncio.create_task(workers.run())
    try:
        await until(lambda: sum(workers.outcomes.values()) == 2)
    finally:
        workers.stop()
        await asyncio.wait_for(running, WAIT_S)

    events = [line["event"] for line in logs]
    first_finished = events.index("request_finished")
    seen = [line for line in logs if line["event"] == "removal_seen"]
    assert {line["cause"] for line in seen} == {"request-web", "request-api"}
    assert all(line["causation_id"] == line["cause"] for line in seen), seen
    assert all(logs.index(line) < first_finished for line in seen[:2])  # side by side
    about_requests = [line for line in logs if requests_named(line)]
    assert {line["event"] for line in about_requests} >= {
        "requests_claimed",
        "collection_started",
        "collection_finished",
        "request_finished",
    }
    for line in about_requests:
        [named] = requests_named(line)  # one request each, never both
        if "repository" in line:
            assert line["repository"] == PATHS[named.removeprefix("request-")], line


async def test_the_relay_names_each_event_and_the_requests_of_each_batch(
    db: asyncpg.Pool[asyncpg.Record],
    settings: Settings,
    logs: list[Line],
) -> None:
    """A batch of events caused by two requests names both (``causation_ids``); a batch of
    one request's events names it (``causation_id``); each published event has a debug
    line with its id and cause."""

    def removals(cause: str, tags: range) -> list[Removed]:
        return [
            Removed(
                TagRemoved(
                    namespace="acme",
                    repository="web",
                    repository_id=1,
                    tag=f"t{n}",
                    tag_id=n,
                    manifest_digest="sha256:" + "a" * 64,
                ),
                causation_id=cause,
            )
            for n in tags
        ]

    async with db.acquire() as conn:
        async with conn.transaction():
            await store.write(
                conn,
                removals("request-1", range(3)) + removals("request-2", range(3, 5)),
                at(NOW_MS),
            )
        relay = Relay(db, settings)
        running = asyncio.create_task(relay.run())
        try:
            await until(lambda: relay.published == 5)
            async with conn.transaction():
                await store.write(conn, removals("request-3", range(5, 7)), at(NOW_MS))
            await until(lambda: relay.published == 7)
        finally:
            relay.stop()
            await asyncio.wait_for(running, WAIT_S)
        rows = await conn.fetch(
            "SELECT event_id::text, event->>'causationid' AS cause FROM gc.outbox"
        )

    first, second = [line for line in logs if line["event"] == "batch_published"]
    assert (first["count"], first["causation_ids"]) == (5, ["request-1", "request-2"])
    assert "causation_id" not in first
    assert (second["count"], second["causation_id"]) == (2, "request-3")
    assert "causation_ids" not in second
    published = {
        line["event_id"]: line["causation_id"]
        for line in logs
        if line["event"] == "event_published"
    }
    assert published == {row["event_id"]: row["cause"] for row in rows}


class _Bindings(logging.Handler):
    """aiokafka's records, each with what structlog had bound where it was logged."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[tuple[logging.LogRecord, dict[str, Any]]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append((record, structlog.contextvars.get_contextvars()))


@pytest.fixture
def aiokafka_records() -> Iterator[_Bindings]:
    """aiokafka's records from now on, debug ones included."""
    handler = _Bindings()
    library = logging.getLogger("aiokafka")
    level = library.level
    library.addHandler(handler)
    library.setLevel(logging.DEBUG)
    yield handler
    library.removeHandler(handler)
    library.setLevel(level)


async def test_the_dead_letter_producer_started_for_one_request_does_not_keep_its_ids(
    settings: Settings, aiokafka_records: _Bindings
) -> None:
    """The dead-letter producer starts on the first refusal, inside that request's
    bindings; its background tasks serve every later letter, and their lines (aiokafka's
    produce requests) name no request, while aiokafka's lines logged by the sending
    request's own task carry its ids."""
    dead_letters = DeadLetters(settings, asyncio.Event())
    try:
        for offset, name in enumerate(("request-1", "request-2")):
            with structlog.contextvars.bound_contextvars(event_id=name):
                await dead_letters.send(
                    undecodable_record(settings.topic_requests, offset),
                    "malformed-json",
                    "not JSON",
                    name,
                )
    finally:
        await dead_letters.stop()

    sending = [
        bound.get("event_id")
        for record, bound in aiokafka_records.records
        if str(record.msg).startswith("Sending (key=")
    ]
    assert sending == ["request-1", "request-2"]
    produce_requests = [
        bound
        for record, bound in aiokafka_records.records
        if record.name == "aiokafka.conn" and "ProduceRequest" in record.getMessage()
    ]
    assert len(produce_requests) >= 2
    assert all("event_id" not in bound for bound in produce_requests), produce_requests
