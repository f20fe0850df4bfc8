"""The fault suite's harness: one workload, run once undisturbed (the baseline) and
again under each fault, and the checks that every faulted run must pass.

A workload is a generated registry (the demo's generator, plus rows at the edges of
what a registry can hold) on a PostgreSQL server of the suite's own, and the requests
a registry would send for it, built once with fixed event ids. Every run gets its own
copy of the database (``CREATE DATABASE … TEMPLATE``), its own topics and consumer
group, and the same request records; so runs compare request by request.

Scale: ``COLLECTOR_FAULTS=large`` runs the suite at the size of the figures in
README's Reliability section; CI runs it small.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition

from collector import publish
from collector.clock import SystemClock
from collector.config import Settings
from collector.db.migrations import migrate
from collector.demo.seed import (
    Shape,
    delete_repositories,
    expire_legacy_tags,
    expire_tags,
    plan_registry,
    write,
)
from collector.kafka import client_options, ensure_topics
from collector.outbox import store
from collector.verify import verify
from events import LegacyTagExpired, RepoDeleted, RequestData, TagExpired
from tests.acceptance.conftest import collector_command, environment
from tests.pipeline import Record, pipeline_settings, produce, read_topic, request, topics
from tests.postgres import SparePostgres
from tests.registry import DAY_MS, Registry, snapshot

BIGINT_MAX = 2**63 - 1


@dataclass(frozen=True)
class Scale:
    repositories: int
    kills: int
    #: How long PostgreSQL stays stopped, or the broker away.
    outage_s: float
    hostile: int


SCALES = {
    "small": Scale(repositories=40, kills=3, outage_s=8.0, hostile=400),
    "large": Scale(repositories=400, kills=10, outage_s=45.0, hostile=5000),
}
SCALE = SCALES[os.environ.get("COLLECTOR_FAULTS", "small")]

#: What the service runs with in every run of the suite.
RUN_ARGS = ("run", "--exit-when-idle", "2", "--batch-size", "25", "--concurrency", "4")


@dataclass(frozen=True)
class Workload:
    server: SparePostgres
    source: str  # the database every run copies
    requests: list[Record]
    #: The manifests whose removal event is larger than the broker takes.
    oversized_digests: frozenset[str]


async def build_workload(server: SparePostgres, scale: Scale) -> Workload:
    """The registry and its requests: expired tags (OCI and pre-OCI), repositories
    marked for deletion, the sweeps a scan adds; and rows at the edges."""
    await server.execute("DROP DATABASE IF EXISTS faults_source", "CREATE DATABASE faults_source")
    conn = await asyncpg.connect(server.url("faults_source"))
    try:
        await migrate(conn)
        now_ms = SystemClock().now_ms()
        plan = plan_registry(
            Shape(repositories=scale.repositories, manifests_per_repository=8),
            now_ms=now_ms,
            seed=23,
        )
        await write(conn, plan)
        expired = await expire_tags(conn, plan.run, fraction=0.4, now_ms=now_ms, seed=23)
        legacy = await expire_legacy_tags(conn, plan.run, fraction=0.3, now_ms=now_ms, seed=23)
        deleted = await delete_repositories(conn, plan.run, fraction=0.15, seed=23)
        requests: list[RequestData] = [TagExpired(**vars(tag)) for tag in expired]
        requests += [LegacyTagExpired(**vars(tag)) for tag in legacy]
        requests += [RepoDeleted(**vars(repository)) for repository in deleted]
        edges, oversized = await _edge_rows(Registry(conn, now_ms=now_ms))
        requests += edges
        requests += (await publish.scan(conn, now_ms)).requests
    finally:
        await conn.close()
    return Workload(server, "faults_source", [request(r) for r in requests], oversized)


async def _edge_rows(reg: Registry) -> tuple[list[RequestData], frozenset[str]]:
    """Rows a registry can hold that once stopped the service: a tag that ends at the
    end of time in a namespace whose window is longer than time, names as long as a
    request carries and names none can carry, and a manifest whose media type alone is
    larger than the broker takes."""
    requests: list[RequestData] = []
    forever = await reg.namespace("forever", window_s=9_300_000_000_000_000)
    big = await reg.repository(forever, "big")
    never = await reg.tag(big, await reg.manifest(big), "never", end_ms=BIGINT_MAX - 1000)
    requests.append(
        TagExpired(
            namespace="forever",
            repository="big",
            repository_id=big,
            tag="never",
            tag_id=never,
            lifetime_end_ms=BIGINT_MAX - 1000,
        )
    )
    long_name = "l" * 1024
    wide = await reg.namespace("wide")
    long = await reg.repository(wide, long_name)
    tag = await reg.expired_tag(long, await reg.manifest(long, blobs=(await reg.blob(),)), "t")
    end_ms = await reg.conn.fetchval("SELECT lifetime_end_ms FROM tag WHERE id = $1", tag)
    requests.append(
        TagExpired(
            namespace="wide",
            repository=long_name,
            repository_id=long,
            tag="t",
            tag_id=tag,
            lifetime_end_ms=end_ms,
        )
    )
    nameless = await reg.repository(await reg.namespace(""), "r")  # only `collect` reaches it
    await reg.expired_tag(nameless, await reg.manifest(nameless))
    heavy = await reg.repository(wide, "heavy", state="marked_for_deletion")
    manifest = await reg.manifest(heavy)
    await reg.conn.execute(
        "UPDATE manifest SET media_type = repeat('m', 2000000) WHERE id = $1", manifest
    )
    await reg.tag(heavy, manifest, "latest", end_ms=reg.now_ms + DAY_MS)
    requests.append(RepoDeleted(namespace="wide", repository="heavy", repository_id=heavy))
    digest = await reg.conn.fetchval("SELECT digest FROM manifest WHERE id = $1", manifest)
    return requests, frozenset({digest})


@dataclass
class Pipeline:
    """One run's world: a copy of the workload's database, topics and a group."""

    workload: Workload
    name: str
    settings: Settings
    logs: Path
    env: dict[str, str]
    processes: list[asyncio.subprocess.Process] = field(default_factory=list)
    #: Exit codes of the processes the test did not kill itself.
    exits: list[int] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.settings.database_url

    async def start(self, **env: str) -> asyncio.subprocess.Process:
        """Start `collector run`; its log (JSON lines) goes to a file of its own."""
        log = (self.logs / f"{self.name}-{len(self.processes)}.jsonl").open("w")
        try:
            process = await asyncio.create_subprocess_exec(
                *collector_command(*RUN_ARGS),
                stdout=asyncio.subprocess.DEVNULL,
                stderr=log,
                env={**self.env, **env},
            )
        finally:
            log.close()
        self.processes.append(process)
        return process

    async def finish(self, process: asyncio.subprocess.Process, within: float = 600) -> None:
        """Wait for ``process`` to exit by itself (idle) and record how."""
        self.exits.append(await asyncio.wait_for(process.wait(), within))

    async def serve(self, **env: str) -> None:
        """Run the service until it is idle."""
        await self.finish(await self.start(**env))

    async def kill(self, process: asyncio.subprocess.Process) -> bool:
        """SIGKILL; True if it was still running."""
        running = process.returncode is None
        if running:
            process.send_signal(signal.SIGKILL)
        await asyncio.wait_for(process.wait(), 30)
        return running

    def log_files(self) -> list[Path]:
        return sorted(self.logs.glob(f"{self.name}-*.jsonl"))


async def pipeline(
    workload: Workload,
    name: str,
    logs: Path,
    *,
    records: Sequence[Record] | None = None,
    **overrides: Any,
) -> Pipeline:
    """A fresh copy of the workload's database and topics holding the requests (or
    ``records``): ready to run. Topics are created now; the caller deletes them with
    :func:`dispose`."""
    database = f"faults_{name}"
    await workload.server.execute(
        f"DROP DATABASE IF EXISTS {database} WITH (FORCE)",
        f"CREATE DATABASE {database} TEMPLATE {workload.source}",
    )
    settings = pipeline_settings(workload.server.url(database), **overrides)
    await ensure_topics(settings, wait_s=5.0)
    await produce(settings.topic_requests, records or workload.requests, via=settings)
    env = environment(
        settings,
        settings.database_url,
        COLLECTOR_RELAY_POLL_INTERVAL_S="0.2",
        COLLECTOR_KAFKA_PRODUCE_TIMEOUT_S=str(settings.kafka_produce_timeout_s),
        # Small batches everywhere, as RUN_ARGS's --batch-size gives the engine: more
        # commits for a kill to fall between.
        COLLECTOR_INTAKE_POLL_RECORDS="25",
        COLLECTOR_RELAY_BATCH_SIZE="25",
    )
    return Pipeline(workload, name, settings, logs, env)


async def outbox_count(run: Pipeline) -> int:
    """How many events the run's outbox holds (published or not)."""
    conn = await asyncpg.connect(run.url)
    try:
        count: int = await conn.fetchval("SELECT count(*) FROM gc.outbox")
    finally:
        await conn.close()
    return count


async def outbox_reaches(run: Pipeline, count: int) -> None:
    """Until the run's outbox holds ``count`` events: somewhere in the middle of it."""
    conn = await asyncpg.connect(run.url)
    try:
        while await conn.fetchval("SELECT count(*) FROM gc.outbox") < count:
            assert run.processes[-1].returncode is None, "the service ended before the fault"
            await asyncio.sleep(0.01)
    finally:
        await conn.close()


Fault = Callable[[Pipeline, asyncio.subprocess.Process], Awaitable[None]]


async def fault_mid_run(
    workload: Workload, name: str, logs: Path, fault: Fault, *, at: int, **overrides: Any
) -> tuple[Pipeline, Final]:
    """One service process on a fresh pipeline; ``fault`` strikes once its outbox holds
    ``at`` events; the process must then finish on its own (idle). Returns the run (its
    processes and logs) and where it ended."""
    run = await pipeline(workload, name, logs, **overrides)
    try:
        process = await run.start()
        await asyncio.wait_for(outbox_reaches(run, at), 300)
        await fault(run, process)
        await run.finish(process)
        return run, await final(run)
    finally:
        await dispose(run)


@dataclass
class Load:
    """What a run looked like from outside, sampled while it ran."""

    seconds: float = 0.0
    peak_rss_mib: float = 0.0
    peak_lag: int = 0  # requests not yet committed by the group, at most
    peak_outbox: int = 0  # events not yet published, at most
    final_lag: int = 0


def _rss_mib(pid: int) -> float:
    """Resident memory of a running process; 0 once it is gone (an exited process not yet
    reaped still has a status, without VmRSS)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    _, found, rest = status.partition("VmRSS:")
    return int(rest.split()[0]) / 1024 if found else 0.0


async def sample(run: Pipeline, process: asyncio.subprocess.Process, every_s: float = 0.25) -> Load:
    """Sample the process's resident memory, the group's lag on the requests topic and
    the outbox's depth until the process exits."""
    load = Load()
    started = asyncio.get_running_loop().time()
    conn = await asyncpg.connect(run.url)
    consumer = AIOKafkaConsumer(group_id=run.settings.group_id, **client_options(run.settings))
    await consumer.start()
    partitions = [
        TopicPartition(run.settings.topic_requests, p) for p in range(run.settings.topic_partitions)
    ]

    async def lag() -> int:
        ends = await consumer.end_offsets(partitions)
        committed = [await consumer.committed(tp) or 0 for tp in partitions]
        return sum(ends[tp] - done for tp, done in zip(partitions, committed, strict=True))

    try:
        while process.returncode is None:
            load.peak_rss_mib = max(load.peak_rss_mib, _rss_mib(process.pid))
            load.final_lag = await lag()
            load.peak_lag = max(load.peak_lag, load.final_lag)
            pending = await store.pending(conn)
            load.peak_outbox = max(load.peak_outbox, pending)
            await asyncio.sleep(every_s)
        load.final_lag = await lag()
    finally:
        await consumer.stop()
        await conn.close()
    load.seconds = asyncio.get_running_loop().time() - started
    return load


async def dispose(run: Pipeline) -> None:
    for process in run.processes:
        if process.returncode is None:
            process.kill()
            await process.wait()
    async with topics(run.settings):
        pass  # deletes them
    await run.workload.server.execute(f"DROP DATABASE IF EXISTS faults_{run.name} WITH (FORCE)")


@dataclass(frozen=True)
class Final:
    """How a run left the registry and what it told the world."""

    rows: dict[str, set[int]]
    #: Each request's outcome by event id (None: deferred, never due); a request refused
    #: at admission has its dead letter's reason instead.
    outcomes: dict[str, str | None]
    #: The removal events as (type, data): ids differ between runs by design.
    removals: Counter[str]
    outbox_ids: set[str]
    set_aside: dict[str, str | None]  # event id -> digest, of events too large to publish
    pending: int
    candidates: int
    published: list[str]  # the removals topic's event ids, in topic order
    letters: list[tuple[str | None, str]]  # (causation id, reason) of each dead letter
    dangling: list[str]
    garbage: list[str]

    @property
    def dead_letters(self) -> Counter[str]:
        """The dead letters by reason."""
        return Counter(reason for _, reason in self.letters)


async def final(run: Pipeline) -> Final:
    conn = await asyncpg.connect(run.url)
    try:
        outbox = await conn.fetch(
            "SELECT event_id, event::text AS event, undeliverable FROM gc.outbox"
        )
        events = [json.loads(row["event"]) for row in outbox]
        requests = await conn.fetch("SELECT event_id, outcome FROM gc.request")
        found = await verify(
            conn, now_ms=SystemClock().now_ms(), protected_digests=[], orphan_grace_s=3600
        )
        pending = await store.pending(conn)
        letters = await read_topic(run.settings.topic_dead_letter, partitions=1, via=run.settings)
        refused = {
            r.event["causationid"]: r.event["data"]["reason"]
            for r in letters
            if "causationid" in r.event
        }
        state = Final(
            rows=await snapshot(conn),
            outcomes=refused | {row["event_id"]: row["outcome"] for row in requests},
            removals=Counter(json.dumps([e["type"], e["data"]], sort_keys=True) for e in events),
            outbox_ids={str(row["event_id"]) for row in outbox},
            set_aside={
                str(row["event_id"]): event["data"].get("digest")
                for row, event in zip(outbox, events, strict=True)
                if row["undeliverable"]
            },
            pending=pending,
            candidates=await conn.fetchval("SELECT count(*) FROM gc.candidate"),
            published=[
                r.event["id"]
                for r in await read_topic(run.settings.topic_removals, via=run.settings)
            ],
            letters=[(r.event.get("causationid"), r.event["data"]["reason"]) for r in letters],
            dangling=[f.what for f in found.dangling],
            garbage=[f.what for f in found.garbage],
        )
    finally:
        await conn.close()
    return state


def assert_loses_nothing(faulted: Final, baseline: Final, workload: Workload) -> None:
    """What every faulted run must show against the undisturbed one."""
    # The registry ends the same: nothing live deleted, no garbage left behind.
    differences = {
        table: {
            "kept": sorted(ids - baseline.rows[table])[:10],
            "deleted": sorted(baseline.rows[table] - ids)[:10],
        }
        for table, ids in faulted.rows.items()
        if ids != baseline.rows[table]
    }
    assert not differences, (
        f"rows kept or deleted unlike the undisturbed run: {differences};"
        f" {faulted.candidates} candidates left, verify's garbage: {faulted.garbage}"
    )
    assert faulted.dangling == []
    assert faulted.garbage == baseline.garbage
    assert faulted.candidates == 0
    # The same removals, each once, and each one's event on the topic, none extra.
    assert faulted.removals == baseline.removals
    assert max(faulted.removals.values()) == 1
    assert faulted.pending == 0, "outbox drained"
    assert set(faulted.published) == faulted.outbox_ids - set(faulted.set_aside)
    assert set(faulted.set_aside.values()) == workload.oversized_digests
    # Every request finished as in the undisturbed run, up to order: which request of a
    # repository collects a tag and which finds it gone (stale) depends on how requests
    # were batched, a request read after its repository was purged is refused as
    # unknown, and a purge cut off after removing its repository finds it gone when
    # redone. Deferred (None), immutable and other refusals must match exactly.
    failed = [event_id for event_id, outcome in faulted.outcomes.items() if outcome == "failed"]
    assert not failed, f"requests that failed: {failed}"
    unlike = Counter(
        (baseline.outcomes.get(event_id), outcome)
        for event_id, outcome in faulted.outcomes.items()
        if _settled(baseline.outcomes.get(event_id)) != _settled(outcome)
    )
    assert faulted.outcomes.keys() == baseline.outcomes.keys()
    assert not unlike, f"(undisturbed, faulted) outcomes that differ: {unlike}"


def _settled(outcome: str | None) -> str | None:
    """The outcomes that all say: what the request named is gone from the registry."""
    gone = ("collected", "stale", "gone", "purged", "unknown-repository")
    return "gone" if outcome in gone else outcome


def assert_never_exited(run: Pipeline) -> None:
    """Every process the test did not kill ran until idle and exited 0."""
    assert run.exits, "no process ran to its end"
    assert all(code == 0 for code in run.exits), run.exits


def assert_never_worked_twice_at_once(run: Pipeline) -> list[dict[str, Any]]:
    """No request was claimed while a claim on it was still open. A claim opens with
    `requests_claimed` and closes with the request's `request_finished` or
    `request_deferred`, or the batch's `claim_abandoned` (rolled back); a killed
    process's open claims close with it (the suite runs one process at a time).
    Returns every log line, for the caller's own checks."""
    lines: list[dict[str, Any]] = []
    for path in run.log_files():
        open_claims: set[str] = set()
        for text in path.read_text().splitlines():
            if text.startswith("run: "):
                continue  # the summary for humans, at exit
            try:
                line = json.loads(text)
            except ValueError:
                raise AssertionError(f"{path.name}: not JSON: {text[:200]!r}") from None
            lines.append(line)
            event = line.get("event")
            if event == "requests_claimed":
                twice = open_claims & set(line["event_ids"])
                assert not twice, f"{path.name}: claimed while still claimed: {twice}"
                open_claims |= set(line["event_ids"])
            elif event == "claim_abandoned":
                open_claims -= set(line["event_ids"])
            elif event in ("request_finished", "request_deferred"):
                open_claims.discard(line["event_id"])
    return lines
