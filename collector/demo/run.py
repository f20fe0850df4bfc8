"""`collector demo`: seed a realistic registry, expire and delete part of it, collect it,
publish the removal events to Kafka, verify.

Until the Kafka intake lands, the demo drives the engine directly; its
removal events still reach the removals topic through the outbox relay.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import asyncpg
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from collector import kafka
from collector.config import Settings
from collector.db.connector import PoolDatabase, create_pool
from collector.db.migrations import migrate
from collector.demo.seed import Shape, delete_repositories, expire_tags, plan_registry, write
from collector.engine import Callbacks, Engine, EngineConfig, Report, SystemClock
from collector.errors import BrokerUnavailable
from collector.outbox.relay import Relay
from collector.verify import Verification, verify
from events import Removal


@dataclass(frozen=True)
class DemoResult:
    report: Report
    seeded_rows: int
    expired_tags: int
    deleted_repositories: int
    events: int
    published: int
    seconds: float
    verification: Verification


async def run_demo(settings: Settings, shape: Shape, *, seed: int, console: Console) -> DemoResult:
    clock = SystemClock()
    pool = await create_pool(
        settings.database_url, max_size=4 * settings.repository_concurrency + 2
    )
    try:
        async with pool.acquire() as conn:
            await migrate(conn)
        await kafka.ensure_topics(settings, wait_s=settings.connect_wait_s)
        async with pool.acquire() as conn:
            with console.status("seeding a registry"):
                plan = plan_registry(shape, now_ms=clock.now_ms(), seed=seed)
                counts = await write(conn, plan)
            seeded = sum(counts.values())
            console.print(
                f"seeded [bold]{seeded:,}[/] rows: {counts['repository']} repositories, "
                f"{counts['manifest']:,} manifests, {counts['blob']:,} blobs, "
                f"{counts['tag']:,} tags"
            )
            expired = await expire_tags(
                conn, plan.run, fraction=0.3, now_ms=clock.now_ms(), seed=seed
            )
            deleted = await delete_repositories(conn, plan.run, fraction=0.1, seed=seed)
            console.print(
                f"expired [bold]{len(expired):,}[/] tags past their time machine, "
                f"marked [bold]{len(deleted)}[/] repositories for deletion"
            )
            events_before = await conn.fetchval("SELECT count(*) FROM gc.outbox")

        callbacks = Callbacks()
        config = EngineConfig(
            batch_size=settings.batch_size, protected_digests=tuple(settings.protected_digests)
        )
        engine = Engine(PoolDatabase(pool), config, clock=clock, callbacks=callbacks)
        started = time.perf_counter()
        with Progress(
            SpinnerColumn(),
            TextColumn("collecting"),
            BarColumn(bar_width=None),
            TextColumn("{task.completed:,} removed  {task.fields[bytes]}"),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        ) as progress:
            task = progress.add_task("collect", total=None, bytes="")
            freed = 0

            async def advance(removal: Removal, causation_id: str) -> None:
                nonlocal freed
                freed += getattr(removal, "size", 0)
                progress.update(task, advance=1, bytes=f"{freed / 1e9:,.2f} GB freed")

            callbacks.on(Removal, advance)
            report = await engine.collect_all(
                causation_id=f"demo-{plan.run}",
                purge_marked=True,
                concurrency=settings.repository_concurrency,
            )
        seconds = time.perf_counter() - started
        async with pool.acquire() as conn:
            events = await conn.fetchval("SELECT count(*) FROM gc.outbox") - events_before
        with console.status(f"publishing removal events to {settings.topic_removals}"):
            published = await _publish(pool, settings)
        async with pool.acquire() as conn:
            verification = await verify(
                conn, now_ms=clock.now_ms(), protected_digests=settings.protected_digests
            )
    finally:
        await pool.close()
    return DemoResult(
        report, seeded, len(expired), len(deleted), events, published, seconds, verification
    )


async def _publish(pool: asyncpg.Pool[asyncpg.Record], settings: Settings) -> int:
    """Run the outbox relay until the outbox is drained; give up (the events stay in
    the outbox) when it makes no progress for ``connect_wait_s``."""
    relay = Relay(pool, settings)
    running = asyncio.create_task(relay.run())
    try:
        last, stalled_since = -1, time.monotonic()
        while (pending := await relay.pending()) > 0:
            if running.done():
                await running  # surfaces the relay's error
            if pending != last:
                last, stalled_since = pending, time.monotonic()
            elif time.monotonic() - stalled_since > settings.connect_wait_s:
                raise BrokerUnavailable(
                    f"{pending} removal events not published to {settings.topic_removals}: "
                    "they stay in the outbox"
                )
            await asyncio.sleep(0.1)
    finally:
        relay.stop()
        await running
    return relay.published


def print_summary(result: DemoResult, console: Console) -> None:
    table = Table(title="removed", title_justify="left")
    table.add_column("kind")
    table.add_column("count", justify="right")
    for event_type, count in sorted(result.report.removed.items()):
        table.add_row(event_type.removeprefix("registry.gc."), f"{count:,}")
    table.add_row("bytes freed", f"{result.report.bytes_freed:,}", style="bold")
    console.print(table)
    rate = result.report.total / result.seconds if result.seconds else 0.0
    console.print(
        f"{result.report.total:,} objects removed from {result.report.repositories} repositories "
        f"in {result.seconds:.2f}s ({rate:,.0f}/s); {result.events:,} removal events, "
        f"{result.published:,} published to Kafka"
    )
    if result.verification.ok:
        due = sum(f.rows for f in result.verification.garbage)
        console.print(f"verify: [green]ok[/], no dangling reference; {due} garbage rows still due")
    else:
        console.print("verify: [red]dangling references found[/]")
