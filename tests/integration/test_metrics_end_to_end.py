"""/metrics through a whole run: `collector run` and the blob deleter on a registry whose
answer is known, scraped before and after; the counters move by exactly that run's
removals and bytes, the time-to-reclaim histograms by one observation per request."""

from __future__ import annotations

import asyncio
import contextlib
import math
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from collector.config import Settings
from collector.metrics import RECLAIM_BUCKETS
from collector.service import Service
from collector.sinks.blob_deleter import BlobDeleter
from collector.sinks.storage import FilesystemStorage
from events import (
    TYPE_PREFIX,
    RepoDeleted,
    RepoSweep,
    RequestData,
    TagExpired,
    request_event,
    to_record,
)
from tests.pipeline import (
    Record,
    free_port,
    pipeline_settings,
    produce,
    read_topic,
    topics,
    until,
)
from tests.registry import FixedClock, Registry

#: A scrape: (series name, its labels) -> value.
Scrape = dict[tuple[str, frozenset[tuple[str, str]]], float]

TYPES = ("tag-expired", "repo-deleted", "repo-sweep")
HISTOGRAMS = ("registry_gc_request_reclaimed_seconds", "registry_gc_request_published_seconds")


@pytest.fixture
async def settings(database_url: str) -> AsyncIterator[Settings]:
    sink_group = f"test.blob-deleter.{uuid.uuid4().hex[:12]}"
    async with topics(pipeline_settings(database_url, sink_group_id=sink_group)) as settings:
        yield settings


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        body: bytes = response.read()
        return body.decode()


def scrape(port: int) -> Scrape:
    """Every sample /metrics shows on ``port``."""
    page = fetch(f"http://127.0.0.1:{port}/metrics")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(page)
        for sample in family.samples
    }


def value(scraped: Scrape, name: str, **labels: str) -> float:
    return scraped.get((name, frozenset(labels.items())), 0.0)


def moved(before: Scrape, after: Scrape, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def total(scrape: Scrape, name: str) -> float:
    """The sum of a series over all its labels."""
    return sum(value for (series, _), value in scrape.items() if series == name)


def registered(name: str, **labels: str) -> float:
    """The value in this process's registry, which the listener serves."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def ready(port: int) -> bool:
    """Whether /readyz says 200 (not listening yet, or a 503, raise an OSError)."""
    with contextlib.suppress(OSError):
        await asyncio.to_thread(fetch, f"http://127.0.0.1:{port}/readyz")
        return True
    return False


@contextlib.asynccontextmanager
async def running(run: Any, stop: Callable[[], None]) -> AsyncIterator[None]:
    task = asyncio.ensure_future(run)
    try:
        yield
    finally:
        stop()
        await asyncio.wait_for(task, 60)


def timed(data: RequestData, time: datetime | None = None) -> Record:
    """A request record (its CloudEvents time ``time``, or now), keyed by its repository."""
    value, headers = to_record(request_event(data, source="/tests", time=time))
    return Record(data.repository_path.encode(), value, headers)


def stored(storage: FilesystemStorage, digests: list[str]) -> Iterator[Path]:
    for digest in digests:
        path = storage.path(digest)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"layer")
        yield path


async def test_a_run_moves_the_counters_by_its_removals_and_bytes_and_the_histograms_once(
    db: asyncpg.Pool[asyncpg.Record],
    registry: Registry,
    settings: Settings,
    clock: FixedClock,
    tmp_path: Path,
) -> None:
    """A tag expiry, a purge, a sweep with garbage and one without: scraped before and
    after, the removals and removed bytes moved by exactly what the run removed (by type,
    blobs by their sizes: a layer another manifest still uses is neither removed nor
    counted); each time-to-reclaim histogram got one observation per request that
    removed something, labelled by its type as registry_gc_requests_finished is; the
    blob deleter's deleted blobs and freed bytes moved by the same blobs and bytes."""
    acme = await registry.namespace("acme")
    web = await registry.repository(acme, "web")
    api = await registry.repository(acme, "api", state="marked_for_deletion")
    ops = await registry.repository(acme, "ops")
    idle = await registry.repository(acme, "idle")
    sizes = {"web": 1_000, "shared": 4_000, "api": 20_000, "ops": 300}
    blobs = {name: await registry.blob(size=size) for name, size in sizes.items()}
    label = await registry.label()
    old = await registry.manifest(web, blobs=(blobs["web"], blobs["shared"]), labels=(label,))
    old_tag = await registry.expired_tag(web, old, "old")
    await registry.tag(web, await registry.manifest(web, blobs=(blobs["shared"],)), "latest")
    await registry.tag(api, await registry.manifest(api, blobs=(blobs["api"],)), "latest")
    await registry.expired_tag(ops, await registry.manifest(ops, blobs=(blobs["ops"],)), "nightly")
    await registry.tag(idle, await registry.manifest(idle), "latest")
    end_ms = await db.fetchval("SELECT lifetime_end_ms FROM tag WHERE id = $1", old_tag)
    digests = {row["id"]: row["digest"] for row in await db.fetch("SELECT id, digest FROM blob")}
    storage = FilesystemStorage(tmp_path)
    files = dict(zip(blobs, stored(storage, [digests[b] for b in blobs.values()]), strict=True))
    expiry = TagExpired(
        namespace="acme",
        repository="web",
        repository_id=web,
        tag="old",
        tag_id=old_tag,
        lifetime_end_ms=end_ms,
    )
    requests = [
        timed(expiry),
        timed(RepoDeleted(namespace="acme", repository="api", repository_id=api)),
        timed(RepoSweep(namespace="acme", repository="ops", repository_id=ops)),
        timed(RepoSweep(namespace="acme", repository="idle", repository_id=idle)),
    ]
    # What the registry's answer is: the expired tag's manifest, label and own layer; the
    # purged repository whole; the swept tag, manifest and layer; nothing of idle.
    removals = {
        "registry.gc.tag-removed": 3,
        "registry.gc.manifest-removed": 3,
        "registry.gc.label-removed": 1,
        "registry.gc.blob-removed": 3,
        "registry.gc.repo-purged": 1,
    }
    freed = sizes["web"] + sizes["api"] + sizes["ops"]

    service_port, deleter_port = free_port(), free_port()
    service = Service(settings.model_copy(update={"metrics_port": service_port}), clock=clock)
    deleter = BlobDeleter(settings.model_copy(update={"metrics_port": deleter_port}), storage)
    async with running(service.run(), service.stop), running(deleter.run(), deleter.stop):
        await until(lambda: ready(service_port))
        await until(lambda: ready(deleter_port))
        before = await asyncio.to_thread(scrape, service_port)
        deleter_before = await asyncio.to_thread(scrape, deleter_port)
        await produce(settings.topic_requests, requests)

        async def done() -> bool:
            """Every request finished (the idle sweep too, which publishes nothing), every
            event published (the last histogram) and every blob deleted."""
            now = await asyncio.to_thread(scrape, service_port)
            finished = total(now, "registry_gc_requests_finished_total") - total(
                before, "registry_gc_requests_finished_total"
            )
            published = sum(
                moved(before, now, "registry_gc_request_published_seconds_count", type=t)
                for t in TYPES
            )
            deleted = await asyncio.to_thread(scrape, deleter_port)
            outcome = "registry_gc_blob_deleter_blobs_total"
            return (
                finished >= len(requests)
                and published >= 3
                and moved(deleter_before, deleted, outcome, outcome="deleted") >= 3
            )

        await until(done, within=60)
        after = await asyncio.to_thread(scrape, service_port)
        deleter_after = await asyncio.to_thread(scrape, deleter_port)
    events = await read_topic(settings.topic_removals)

    # The run removed what the registry's answer says, no more: by type, and blob bytes.
    assert Counter(record.event["type"] for record in events) == removals
    blob_sizes = [
        r.event["data"]["size"] for r in events if r.event["type"].endswith("blob-removed")
    ]
    assert sum(blob_sizes) == freed
    # Metrics name types as the requests' do: without the CloudEvents prefix.
    assert {
        t: moved(before, after, "registry_gc_removals_total", type=t.removeprefix(TYPE_PREFIX))
        for t in removals
    } == removals
    assert moved(before, after, "registry_gc_removed_bytes_total", type="blob-removed") == freed
    for name in HISTOGRAMS:
        assert {t: moved(before, after, f"{name}_count", type=t) for t in TYPES} == {
            "tag-expired": 1,
            "repo-deleted": 1,
            "repo-sweep": 1,  # ops; idle removed nothing
        }, name
    # The same labels as the requests finished (repo-sweep: ops and idle).
    finished = (
        ("tag-expired", "collected"),
        ("repo-deleted", "purged"),
        ("repo-sweep", "collected"),
    )
    assert {
        t: moved(before, after, "registry_gc_requests_finished_total", type=t, outcome=o)
        for t, o in finished
    } == {"tag-expired": 1, "repo-deleted": 1, "repo-sweep": 2}
    deleted = "registry_gc_blob_deleter_blobs_total"
    assert moved(deleter_before, deleter_after, deleted, outcome="deleted") == 3
    assert (
        moved(deleter_before, deleter_after, "registry_gc_blob_deleter_freed_bytes_total") == freed
    )
    assert [name for name, path in files.items() if path.exists()] == ["shared"]
    # Nothing was counted after the last scrape, until both stopped.
    for name, labels in (
        *((f"{h}_count", {"type": t}) for h in HISTOGRAMS for t in TYPES),
        *(("registry_gc_removals_total", {"type": t.removeprefix(TYPE_PREFIX)}) for t in removals),
        ("registry_gc_removed_bytes_total", {"type": "blob-removed"}),
        (deleted, {"outcome": "deleted"}),
        ("registry_gc_blob_deleter_freed_bytes_total", {}),
    ):
        assert registered(name, **labels) == value(after, name, **labels), name


def in_bucket(name: str, bound: float) -> float:
    """How many repo-sweep requests a histogram counts up to ``bound`` (its ``le``)."""
    for family in REGISTRY.collect():
        for sample in family.samples:
            if (
                sample.name == f"{name}_bucket"
                and sample.labels["type"] == "repo-sweep"
                and float(sample.labels["le"]) == bound
            ):
                return sample.value
    return 0.0


async def test_requests_timed_at_the_ends_of_what_a_record_can_say_are_measured_safely(
    db: asyncpg.Pool[asyncpg.Record],
    registry: Registry,
    settings: Settings,
    clock: FixedClock,
) -> None:
    """A request timed in year 1 at +23:59 (before year 1 in UTC) and one timed at the
    last microsecond of 9999 at -23:59 (after it) are admitted, collected and measured:
    the past one lands past every bucket, the future one (clock skew, or nonsense) counts
    0; nothing is dead-lettered, nothing fails."""
    acme = await registry.namespace("acme")
    almost_a_day = timedelta(hours=23, minutes=59)
    times = {
        "ancient": datetime(1, 1, 1, tzinfo=timezone(almost_a_day)),
        "future": datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=timezone(-almost_a_day)),
    }
    records = []
    for name, time in times.items():
        repository = await registry.repository(acme, name)
        await registry.expired_tag(repository, await registry.manifest(repository))
        sweep = RepoSweep(namespace="acme", repository=name, repository_id=repository)
        records.append(timed(sweep, time))
    bounds = (1.0, max(RECLAIM_BUCKETS), math.inf)  # the first, the last finite, +Inf
    histogram = {(name, bound): in_bucket(name, bound) for name in HISTOGRAMS for bound in bounds}
    sums = {name: registered(f"{name}_sum", type="repo-sweep") for name in HISTOGRAMS}
    counts = {name: registered(f"{name}_count", type="repo-sweep") for name in HISTOGRAMS}
    await produce(settings.topic_requests, records)

    service = Service(settings, clock=clock)
    serving = asyncio.create_task(service.run())
    try:
        await until(
            lambda: all(
                registered(f"{name}_count", type="repo-sweep") - counts[name] >= 2
                for name in HISTOGRAMS
            )
        )
    finally:
        service.stop()
        summary = await asyncio.wait_for(serving, 60)

    assert summary.outcomes == {"collected": 2}
    assert summary.refused == {}
    stored_times = await db.fetch(
        "SELECT event_id, extract(epoch FROM requested_at) AS epoch FROM gc.request ORDER BY id"
    )
    assert [row["epoch"] < -62_135_596_800 for row in stored_times] == [True, False]  # year 1
    for name in HISTOGRAMS:
        assert [in_bucket(name, bound) - histogram[name, bound] for bound in bounds] == [1, 1, 2]
        since_year_1 = (datetime(2026, 1, 1, tzinfo=UTC) - times["ancient"]).total_seconds()
        assert registered(f"{name}_sum", type="repo-sweep") - sums[name] > since_year_1
