"""`collector demo`: the whole pipeline on local services, end to end.

Seed a realistic registry and a storage folder holding a (sparse) file per
blob, expire and delete part of the registry, publish the requests a
registry would send, run the service until it is idle, run the blob deleter
on the storage folder, then check that the registry verifies clean and that
the storage holds exactly the blobs the registry still has.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path

import asyncpg
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from collector import kafka, publish
from collector.clock import SystemClock
from collector.config import Settings
from collector.db.connector import Connection, create_pool
from collector.db.migrations import migrate
from collector.demo.seed import (
    Shape,
    delete_repositories,
    expire_legacy_tags,
    expire_tags,
    plan_registry,
    write,
)
from collector.service import Service, ServiceSummary
from collector.sinks.blob_deleter import BlobDeleter, Counts
from collector.sinks.storage import blob_key
from collector.verify import Verification, verify
from events import LegacyTagExpired, RepoDeleted, RepoSweep, RequestData, TagExpired

#: The service and the blob deleter stop once idle this long.
_IDLE_S = 1.0


@dataclass(frozen=True)
class StorageCheck:
    """Files versus blob rows after the blob deleter ran."""

    files_before: int
    files_after: int
    #: Files whose blob row is gone: bytes the deleter should have freed.
    orphaned: int
    #: Blob rows without their file: bytes deleted too early (must never happen).
    missing: int


@dataclass(frozen=True)
class DemoResult:
    seeded_rows: int
    requests: int
    removed: dict[str, int]
    bytes_freed: int
    service: ServiceSummary
    deleter: Counts
    storage: StorageCheck
    seconds: float
    verification: Verification

    @property
    def ok(self) -> bool:
        """The registry verifies clean and the storage matches it file for file."""
        return self.verification.ok and self.storage.orphaned == self.storage.missing == 0


async def run_demo(
    settings: Settings, shape: Shape, *, seed: int, console: Console, storage_root: Path
) -> DemoResult:
    clock = SystemClock()
    started = time.perf_counter()
    # A fresh database is migrated here: the demo is the first thing a newcomer runs.
    pool = await create_pool(
        settings.database_url, max_size=4, wait_s=settings.connect_wait_s, migrated=False
    )
    try:
        async with pool.acquire() as conn:
            await migrate(conn)
        await kafka.ensure_topics(settings, wait_s=settings.connect_wait_s)
        async with pool.acquire() as conn:
            with console.status("seeding a registry"):
                earlier: int = await conn.fetchval("SELECT count(*) FROM blob")
                plan = plan_registry(shape, now_ms=clock.now_ms(), seed=seed)
                counts = await write(conn, plan)
                files_before = await _fill_storage(conn, storage_root)
            seeded = sum(counts.values())
            console.print(
                f"seeded [bold]{seeded:,}[/] rows: {counts['repository']} repositories, "
                f"{counts['manifest']:,} manifests, {counts['blob']:,} blobs, "
                f"{counts['tag']:,} tags, {counts.get('repository_tag', 0):,} pre-OCI tags;"
                f" {files_before:,} blob files in {storage_root}"
                # A database earlier demos seeded has their blobs too; each gets its file.
                + (f" (one per blob row, {earlier:,} of them seeded before)" if earlier else "")
            )
            expired = await expire_tags(
                conn, plan.run, fraction=0.3, now_ms=clock.now_ms(), seed=seed
            )
            expired_legacy = await expire_legacy_tags(
                conn, plan.run, fraction=0.3, now_ms=clock.now_ms(), seed=seed
            )
            deleted = await delete_repositories(conn, plan.run, fraction=0.1, seed=seed)
            outbox_before: int = await conn.fetchval("SELECT coalesce(max(id), 0) FROM gc.outbox")
            # What the registry announces, then the sweeps a scan adds (expired uploads).
            requests: list[RequestData] = [TagExpired(**vars(tag)) for tag in expired]
            requests += [LegacyTagExpired(**vars(tag)) for tag in expired_legacy]
            requests += [RepoDeleted(**vars(repository)) for repository in deleted]
            found = await publish.scan(conn, clock.now_ms())
            sweeps = [r for r in found.requests if isinstance(r, RepoSweep)]
        events = await publish.publish(settings, [*requests, *sweeps])
        console.print(
            f"expired [bold]{len(expired):,}[/] tags and [bold]{len(expired_legacy):,}[/] pre-OCI"
            f" tags, marked [bold]{len(deleted)}[/] repositories"
            f" for deletion; published {len(requests):,} requests and {len(sweeps)} sweeps"
            f" to {settings.topic_requests}"
        )
        service = await _serve(
            settings, pool, [event.id for event in events], outbox_before, console
        )
        with console.status("deleting the removed blobs' files (collector sink blob-deleter)"):
            deleter = BlobDeleter(settings, storage_root, exit_when_idle=_IDLE_S)
            await deleter.run()
        async with pool.acquire() as conn:
            removed, bytes_freed = await _removed(conn, outbox_before)
            storage = await _check_storage(conn, storage_root, files_before)
            verification = await verify(
                conn,
                now_ms=clock.now_ms(),
                protected_digests=settings.protected_digests,
                orphan_grace_s=settings.orphan_grace_s,
            )
    finally:
        await pool.close()
    return DemoResult(
        seeded_rows=seeded,
        requests=len(events),
        removed=removed,
        bytes_freed=bytes_freed,
        service=service,
        deleter=deleter.counts,
        storage=storage,
        seconds=time.perf_counter() - started,
        verification=verification,
    )


async def _serve(
    settings: Settings,
    pool: asyncpg.Pool[asyncpg.Record],
    event_ids: list[str],
    outbox_before: int,
    console: Console,
) -> ServiceSummary:
    """Run `collector run` until idle, showing requests finished and events published."""
    running = asyncio.create_task(Service(settings, exit_when_idle_s=_IDLE_S).run())
    with Progress(
        TextColumn("{task.description:<24}"),
        BarColumn(bar_width=None),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as progress:
        requests = progress.add_task("requests finished", total=len(event_ids))
        published = progress.add_task("removal events published", total=None)
        while not running.done():
            async with pool.acquire() as conn:
                finished = await conn.fetchval(
                    "SELECT count(*) FROM gc.request"
                    " WHERE event_id = ANY($1::text[]) AND finished_at IS NOT NULL",
                    event_ids,
                )
                row = await conn.fetchrow(
                    "SELECT count(*) AS total, count(published_at) AS published"
                    " FROM gc.outbox WHERE id > $1",
                    outbox_before,
                )
            assert row is not None  # an aggregate always has its row
            progress.update(requests, completed=finished)
            progress.update(published, completed=row["published"], total=row["total"])
            await asyncio.wait([running], timeout=0.2)
    return await running


async def _fill_storage(conn: Connection, root: Path) -> int:
    """A sparse file of the blob's size for every blob row: the bytes of the registry."""
    rows = await conn.fetch("SELECT digest, size FROM blob")
    await asyncio.to_thread(_write_files, root, [(row["digest"], row["size"] or 0) for row in rows])
    return len(rows)


def _write_files(root: Path, blobs: list[tuple[str, int]]) -> None:
    for digest, size in blobs:
        path = root / blob_key(digest)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as file:
            file.truncate(size)


def _stored_keys(root: Path) -> set[str]:
    return {path.relative_to(root).as_posix() for path in root.glob("*/*/*") if path.is_file()}


async def _check_storage(conn: Connection, root: Path, files_before: int) -> StorageCheck:
    stored = await asyncio.to_thread(_stored_keys, root)
    blobs = {blob_key(row["digest"]) for row in await conn.fetch("SELECT digest FROM blob")}
    return StorageCheck(
        files_before=files_before,
        files_after=len(stored),
        orphaned=len(stored - blobs),
        missing=len(blobs - stored),
    )


async def _removed(conn: Connection, outbox_before: int) -> tuple[dict[str, int], int]:
    rows = await conn.fetch(
        """
        SELECT event_type, count(*) AS count,
               coalesce(sum((event -> 'data' ->> 'size')::bigint), 0) AS bytes
        FROM gc.outbox WHERE id > $1 GROUP BY event_type
        """,
        outbox_before,
    )
    return {row["event_type"]: row["count"] for row in rows}, int(sum(row["bytes"] for row in rows))


def print_summary(result: DemoResult, console: Console) -> None:
    table = Table(title="removed", title_justify="left")
    table.add_column("kind")
    table.add_column("count", justify="right")
    for event_type, count in sorted(result.removed.items()):
        table.add_row(event_type.removeprefix("registry.gc."), f"{count:,}")
    table.add_row("bytes freed", f"{result.bytes_freed:,}", style="bold")
    console.print(table)
    service, deleter, storage = result.service, result.deleter, result.storage
    outcomes = ", ".join(f"{count:,} {name}" for name, count in sorted(service.outcomes.items()))
    console.print(
        f"service: {service.accepted:,} requests accepted (the demo published"
        f" {result.requests:,}), {sum(service.refused.values())} refused; finished: {outcomes};"
        f" {service.published:,} removal events published in {service.seconds:.1f}s"
    )
    console.print(
        f"blob deleter: {deleter.deleted:,} files deleted, {deleter.already_gone:,} already gone,"
        f" {deleter.repushed:,} kept (re-pushed); storage {storage.files_before:,} →"
        f" {storage.files_after:,} files, {storage.orphaned} orphaned, {storage.missing} missing"
    )
    console.print(f"demo took {result.seconds:.1f}s")
    if result.verification.ok:
        due = sum(f.rows for f in result.verification.garbage)
        console.print(f"verify: [green]ok[/], no dangling reference; {due} garbage rows still due")
    else:
        console.print("verify: [red]dangling references found[/]")
