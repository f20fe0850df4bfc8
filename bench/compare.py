"""Benchmark: the collector side by side with the ancestor's algorithm and the floor.

    .venv/bin/python -m bench.compare [--repositories 300] [--scenario expiry|purge]...
                                      [--contenders seed-style,collector,floor]
                                      [--results bench/results]

One registry is generated (the demo's generator, seeded, written with COPY)
and given the scenario's garbage: ``expiry`` ends 40% of the tags of both
models past their window (mass expiry across many repositories), ``purge``
marks 10% of the repositories for deletion. Each contender then runs on an
identical copy (``CREATE DATABASE ... TEMPLATE``), one after the other:

- ``seed-style``: the ancestor's algorithm on our schema (:mod:`bench.seed_style`);
- ``collector``: the engine, as ``collector collect --all --purge`` runs it;
- ``floor``: set-based statements with no safety checks and no events
  (:mod:`bench.floor`);
- ``plan``: not a contender but a reader: ``collector plan`` (due now) on a copy,
  which must count exactly the objects the others removed (it removes none).

Every contender must end in the same registry, table by table, row by row, or
the run fails before it prints a figure. Ratios (speed-up over seed-style,
share of the floor) come from one run on one machine, so they hold on a noisy
one. Results go to ``bench/results/compare-<time>.json``, and a PNG chart
beside it when matplotlib is installed.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import asyncpg

from bench import floor
from bench import report as report_file
from bench.collect import ADMIN_URL
from bench.seed_style import SeedStyle
from collector.clock import SystemClock, ms_to_datetime
from collector.config import EMPTY_LAYER_DIGEST
from collector.db.connector import Connection, PoolDatabase
from collector.db.migrations import migrate
from collector.demo.seed import (
    TABLES,
    Shape,
    delete_repositories,
    expire_legacy_tags,
    expire_tags,
    plan_registry,
    write,
)
from collector.engine import Engine, EngineConfig
from collector.engine.plan import PlanScope, plan
from collector.limits import engine_pool_size
from collector.logging import configure_logging
from tests.registry import FixedClock

PREFIX = "registry_bench_compare"
CONTENDERS = ("seed-style", "collector", "floor", "plan")
SCENARIOS = ("expiry", "purge")
#: Tables whose rows are objects with a removal event (the rest are links and mappings).
OBJECT_TABLES = (
    "repository",
    "tag",
    "repository_tag",
    "tag_manifest",
    "manifest",
    "label",
    "image",
    "blob",
)
PROTECTED = [EMPTY_LAYER_DIGEST]


@dataclass(frozen=True)
class Figure:
    """One contender's run of one scenario."""

    scenario: str
    contender: str
    seconds: float
    rows_removed: int
    objects_removed: int

    @property
    def rows_per_s(self) -> float:
        return self.rows_removed / self.seconds

    @property
    def objects_per_s(self) -> float:
        return self.objects_removed / self.seconds


#: A contender: given a connection URL and the collection's time, collects.
Contender = Callable[[str, int], Awaitable[None]]


async def run_seed_style(url: str, now_ms: int) -> None:
    conn = await asyncpg.connect(url)
    try:
        await SeedStyle(
            conn, now_ms=now_ms, at_time=ms_to_datetime(now_ms), protected=PROTECTED
        ).collect_all()
    finally:
        await conn.close()


async def run_collector(url: str, now_ms: int, *, concurrency: int = 4) -> None:
    async with asyncpg.create_pool(url, min_size=2, max_size=engine_pool_size(concurrency)) as pool:
        config = EngineConfig(protected_digests=tuple(PROTECTED))
        engine = Engine(PoolDatabase(pool), config, clock=FixedClock(now_ms))
        await engine.collect_all(causation_id="bench", purge_marked=True, concurrency=concurrency)


async def run_floor(url: str, now_ms: int) -> None:
    conn = await asyncpg.connect(url)
    try:
        await floor.collect(
            conn, now_ms=now_ms, at_time=ms_to_datetime(now_ms), protected=PROTECTED
        )
    finally:
        await conn.close()


async def run_plan(url: str, now_ms: int) -> int:
    """Plan (due now) the whole registry, marked repositories purged; the objects planned."""
    conn = await asyncpg.connect(url)
    try:
        planned = await plan(
            conn, PlanScope(), now_ms=now_ms, horizon_s=0, protected_digests=PROTECTED
        )
    finally:
        await conn.close()
    return planned.now.total


RUNNERS: dict[str, Contender] = {
    "seed-style": run_seed_style,
    "collector": run_collector,
    "floor": run_floor,
}


async def _admin(statement: str) -> None:
    admin = await asyncpg.connect(ADMIN_URL)
    try:
        await admin.execute(statement)
    finally:
        await admin.close()


async def drop_database(name: str) -> None:
    await _admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def _url(database: str) -> str:
    return ADMIN_URL.rsplit("/", 1)[0] + "/" + database


async def generate(scenario: str, repositories: int, seed: int) -> tuple[str, int]:
    """The scenario's registry as a template database; returns it and the time it is
    collected at."""
    template = f"{PREFIX}_{scenario.replace('-', '_')}"
    await drop_database(template)
    await _admin(f"CREATE DATABASE {template}")
    conn = await asyncpg.connect(_url(template))
    try:
        await migrate(conn)
        now_ms = SystemClock().now_ms()
        plan = plan_registry(Shape(repositories=repositories), now_ms=now_ms, seed=seed)
        await write(conn, plan)
        if scenario == "expiry":
            await expire_tags(conn, plan.run, fraction=0.4, now_ms=now_ms, seed=seed)
            await expire_legacy_tags(conn, plan.run, fraction=0.4, now_ms=now_ms, seed=seed)
        else:
            await delete_repositories(conn, plan.run, fraction=0.1, seed=seed)
            # Untagged manifests in the marked repositories: a purge must reach them too.
            await conn.execute(
                """
                WITH chosen AS (
                    SELECT t.id FROM tag t JOIN repository r ON r.id = t.repository_id
                    WHERE gc.repository_is_marked(r.state) AND t.id % 5 = 0
                ), links AS (
                    DELETE FROM tag_to_repository_tag x USING chosen c WHERE x.tag_id = c.id
                )
                DELETE FROM tag t USING chosen c WHERE t.id = c.id
                """
            )
        # The engine also decides what earlier runs left queued; the others do not.
        if await conn.fetchval("SELECT count(*) FROM gc.candidate"):
            raise SystemExit(f"{template}: gc.candidate is not empty")
        await conn.execute("VACUUM ANALYZE")
    finally:
        await conn.close()
    return template, now_ms


async def snapshot(conn: Connection) -> dict[str, tuple[int, str]]:
    """Each registry table's row count and a digest of its ids."""
    state = {}
    for table, _ in TABLES:
        ids = await conn.fetchval(
            f"SELECT coalesce(array_agg(id ORDER BY id), '{{}}') FROM {table}"
        )
        state[table] = (len(ids), hashlib.sha256(repr(list(ids)).encode()).hexdigest()[:16])
    return state


async def contend(scenario: str, template: str, now_ms: int, contenders: list[str]) -> list[Figure]:
    """Run each contender on its own copy of ``template``; check the end states agree."""
    figures: list[Figure] = []
    ends: dict[str, dict[str, tuple[int, str]]] = {}
    planned: int | None = None
    for name in contenders:
        if name == "plan":
            started = time.perf_counter()
            planned = await run_plan(_url(template), now_ms)
            figures.append(Figure(scenario, name, time.perf_counter() - started, 0, planned))
            continue
        copy = f"{template}_{name.replace('-', '_')}"
        await drop_database(copy)
        await _admin(f"CREATE DATABASE {copy} TEMPLATE {template}")
        url = _url(copy)
        conn = await asyncpg.connect(url)
        try:
            before = await snapshot(conn)
        finally:
            await conn.close()
        started = time.perf_counter()
        await RUNNERS[name](url, now_ms)
        seconds = time.perf_counter() - started
        conn = await asyncpg.connect(url)
        try:
            ends[name] = after = await snapshot(conn)
        finally:
            await conn.close()
        await drop_database(copy)
        removed = {table: before[table][0] - after[table][0] for table in before}
        figures.append(
            Figure(
                scenario,
                name,
                seconds,
                sum(removed.values()),
                sum(removed[table] for table in OBJECT_TABLES),
            )
        )
    removers = [name for name in contenders if name != "plan"]
    for figure in figures:
        if planned is not None and figure.objects_removed != planned:
            raise SystemExit(
                f"{scenario}: the plan counted {planned} objects, {figure.contender}"
                f" removed {figure.objects_removed}"
            )
    if not removers:
        return figures
    first, *others = removers
    for name in others:
        differ = [t for t in ends[first] if ends[first][t] != ends[name][t]]
        if differ:
            raise SystemExit(
                f"{scenario}: {name} ends in another state than {first}, in "
                + ", ".join(f"{t} ({ends[first][t][0]} vs {ends[name][t][0]} rows)" for t in differ)
            )
    return figures


def report(figures: list[Figure]) -> list[dict[str, object]]:
    """Each figure with its ratios to seed-style and to the floor of its scenario."""
    rows = []
    for figure in figures:
        same = {f.contender: f for f in figures if f.scenario == figure.scenario}
        row: dict[str, object] = {**asdict(figure)}
        row["rows_per_s"] = round(figure.rows_per_s)
        row["objects_per_s"] = round(figure.objects_per_s)
        if "seed-style" in same:
            row["speedup_over_seed_style"] = round(same["seed-style"].seconds / figure.seconds, 2)
        if "floor" in same:
            row["share_of_floor"] = round(same["floor"].seconds / figure.seconds, 3)
        rows.append(row)
    return rows


def print_table(rows: list[dict[str, object]]) -> None:
    print(
        f"{'scenario':8} {'contender':10} {'seconds':>8} {'rows':>8} {'objects':>8}"
        f" {'rows/s':>9} {'objects/s':>9} {'vs seed':>8} {'of floor':>8}"
    )
    for row in rows:
        print(
            f"{row['scenario']!s:8} {row['contender']!s:10} {row['seconds']:>8.2f}"
            f" {row['rows_removed']:>8,} {row['objects_removed']:>8,} {row['rows_per_s']:>9,}"
            f" {row['objects_per_s']:>9,} {row.get('speedup_over_seed_style', ''):>8}"
            f" {row.get('share_of_floor', ''):>8}"
        )


def save(rows: list[dict[str, object]], arguments: dict[str, object], results: Path) -> Path:
    path = report_file.save("compare", rows, arguments, results)
    _chart(rows, path.with_suffix(".png"))
    return path


def _chart(rows: list[dict[str, object]], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot
    except ImportError:
        return
    scenarios = sorted({str(row["scenario"]) for row in rows})
    contenders = [c for c in CONTENDERS if any(row["contender"] == c for row in rows)]
    figure, axes = pyplot.subplots(figsize=(7, 4))
    width = 0.8 / len(contenders)
    for i, contender in enumerate(contenders):
        values = [
            next(
                (
                    float(str(r["rows_per_s"]))
                    for r in rows
                    if r["scenario"] == s and r["contender"] == contender
                ),
                0.0,
            )
            for s in scenarios
        ]
        axes.bar([x + i * width for x in range(len(scenarios))], values, width, label=contender)
    axes.set_xticks([x + width * (len(contenders) - 1) / 2 for x in range(len(scenarios))])
    axes.set_xticklabels(scenarios)
    axes.set_ylabel("registry rows removed per second")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path)
    pyplot.close(figure)


async def main_async(args: argparse.Namespace) -> Path:
    figures: list[Figure] = []
    for scenario in args.scenario:
        template, now_ms = await generate(scenario, args.repositories, args.seed)
        try:
            figures += await contend(scenario, template, now_ms, args.contenders)
        finally:
            await drop_database(template)
    rows = report(figures)
    print_table(rows)
    arguments = {"repositories": args.repositories, "seed": args.seed}
    return save(rows, arguments, args.results)


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repositories", type=int, default=300)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--scenario", action="append", choices=SCENARIOS, help="repeatable; default: both"
    )
    parser.add_argument(
        "--contenders",
        type=lambda text: text.split(","),
        default=list(CONTENDERS),
        help="comma-separated, in the order they run (default: %(default)s)",
    )
    parser.add_argument("--results", type=Path, default=Path("bench/results"))
    args = parser.parse_args(argv)
    args.scenario = args.scenario or list(SCENARIOS)
    if unknown := set(args.contenders) - set(CONTENDERS):
        parser.error(f"unknown contender(s): {', '.join(sorted(unknown))}")
    configure_logging("warning")
    path = asyncio.run(main_async(args))
    print(f"results: {path}")
    return path


if __name__ == "__main__":
    main()
