"""No poison stops the service: a request whose handling fails for a reason waiting will
not change ends `failed`, reaches the dead-letter topic as `unprocessable` with its
original position, and every other request goes on being served."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

import asyncpg
import pytest
import structlog

from collector.cli import main
from collector.clock import SystemClock
from collector.config import Settings
from collector.engine import Cause, Engine, Report
from collector.errors import Contention
from events import RepoSweep
from tests.integration.test_service import requests_table, run_service
from tests.pipeline import pipeline_settings, produce, read_topic, request, topics
from tests.registry import FixedClock, Registry


@pytest.fixture
async def settings(database_url: str) -> AsyncIterator[Settings]:
    async with topics(pipeline_settings(database_url)) as settings:
        yield settings


def poison_engine(monkeypatch: pytest.MonkeyPatch, poison: int) -> None:
    """Make the engine fail on repository ``poison`` for a reason waiting will not
    change: a stand-in for any row the collector cannot handle."""
    original = Engine.collect_many

    async def collect_many(self: Engine, causes: Sequence[Cause], **kwargs: Any) -> Report:
        if poison in (cause.repository_id for cause in causes):
            raise ValueError(f"cannot process repository {poison}")
        return await original(self, causes, **kwargs)

    monkeypatch.setattr(Engine, "collect_many", collect_many)


async def test_a_request_that_cannot_be_processed_fails_alone_and_the_service_goes_on(
    db: asyncpg.Pool[asyncpg.Record],
    registry: Registry,
    settings: Settings,
    clock: FixedClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Three sweeps claimed together, one of whose repository makes the engine fail (a
    stand-in for any row the collector cannot handle): the batch is handled again one
    request at a time, the two others collect their repositories, the poisoned one ends
    `failed` with an `unprocessable` dead letter, and the service exits only when idle;
    a second service does not meet the request again."""
    acme = await registry.namespace("acme")
    repositories = {
        name: await registry.repository(acme, name) for name in ("web", "poison", "api")
    }
    for repository in repositories.values():
        await registry.expired_tag(repository, await registry.manifest(repository))
    poison = repositories["poison"]
    poison_engine(monkeypatch, poison)
    sweeps = [
        request(RepoSweep(namespace="acme", repository=name, repository_id=repository))
        for name, repository in repositories.items()
    ]
    await produce(settings.topic_requests, sweeps)

    summary = await run_service(settings, clock)

    assert summary.outcomes == {"collected": 2, "failed": 1}
    assert summary.refused == {"unprocessable": 1}
    outcomes = {row["event_id"]: row["outcome"] for row in await requests_table(db)}
    poisoned_id = [r for r in await read_topic(settings.topic_requests) if r.key == b"acme/poison"]
    assert outcomes[poisoned_id[0].event["id"]] == "failed"
    tags = await db.fetch("SELECT repository_id FROM tag")
    assert [row["repository_id"] for row in tags] == [poison]
    [letter] = await read_topic(settings.topic_dead_letter, partitions=1)
    data = letter.event["data"]
    assert data["reason"] == "unprocessable"
    assert f"cannot process repository {poison}" in data["detail"]
    assert (data["topic"], data["partition"], data["offset"]) == (
        settings.topic_requests,
        poisoned_id[0].partition,
        poisoned_id[0].offset,
    )
    assert letter.event["causationid"] == poisoned_id[0].event["id"]

    again = await run_service(settings, clock)
    assert again.outcomes == {}


async def test_a_race_lost_too_often_is_tried_again_not_failed(
    db: asyncpg.Pool[asyncpg.Record],
    registry: Registry,
    settings: Settings,
    clock: FixedClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The engine giving up on a transaction that kept losing races (Contention) is
    retriable: the claim is rolled back and the request is collected on a later try, not
    ended `failed` nor dead-lettered."""
    acme = await registry.namespace("acme")
    web = await registry.repository(acme, "web")
    await registry.expired_tag(web, await registry.manifest(web))
    original = Engine.collect_many
    attempts = []

    async def collect_many(self: Engine, causes: Sequence[Cause], **kwargs: Any) -> Report:
        attempts.append(list(causes))
        if len(attempts) == 1:
            raise Contention("transaction kept conflicting: simulated")
        return await original(self, causes, **kwargs)

    monkeypatch.setattr(Engine, "collect_many", collect_many)
    await produce(
        settings.topic_requests,
        [request(RepoSweep(namespace="acme", repository="web", repository_id=web))],
    )

    summary = await run_service(settings, clock, idle_s=1.5)

    assert len(attempts) == 2
    assert summary.outcomes == {"collected": 1}
    assert summary.refused == {}
    assert await db.fetchval("SELECT count(*) FROM tag") == 0


@pytest.mark.parametrize("scope", ["--all", "named"])
async def test_collect_names_a_repository_it_cannot_collect_and_collects_the_rest(
    scope: str,
    db: asyncpg.Pool[asyncpg.Record],
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`collect` meets a repository the engine fails on for a reason waiting will not
    change (a stand-in for any such row): the registry-wide pass gives way to one
    repository at a time, that one is named on stderr, the others are collected, and
    the exit status is 1."""
    names = ("web", "poison", "api")
    async with db.acquire() as conn:  # due by the command's clock: the system's
        registry = Registry(conn, now_ms=SystemClock().now_ms())
        acme = await registry.namespace("acme")
        repositories = {name: await registry.repository(acme, name) for name in names}
        for repository in repositories.values():
            await registry.expired_tag(repository, await registry.manifest(repository))
    poison = repositories["poison"]
    poison_engine(monkeypatch, poison)

    async def collect_all(self: Engine, **kwargs: Any) -> Report:
        raise ValueError(f"cannot process repository {poison}")

    monkeypatch.setattr(Engine, "collect_all", collect_all)
    paths = ["--all"] if scope == "--all" else [f"acme/{name}" for name in names]
    logging_config = structlog.get_config()
    try:  # the command line in a thread of its own: it runs its own event loop
        with pytest.raises(SystemExit) as exited:
            await asyncio.to_thread(
                main, ["collect", *paths, "--no-publish", "--database-url", database_url]
            )
    finally:
        structlog.configure(**logging_config)

    assert exited.value.code == 1
    stderr = capsys.readouterr().err
    named = f"repository {poison}" if scope == "--all" else "acme/poison"
    assert f"collect: {named} skipped, it cannot be collected" in stderr
    not_collected = f"the registry-wide pass, {named}" if scope == "--all" else named
    assert f"collect: not collected: {not_collected}" in stderr
    tags = await db.fetch("SELECT repository_id FROM tag")
    assert [row["repository_id"] for row in tags] == [poison]
