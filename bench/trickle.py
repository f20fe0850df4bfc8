"""Benchmark (c), trickle: request-to-last-removal latency under a steady stream of tag ends.

    .venv/bin/python -m bench.trickle [--rate 200 --rate 500] [--seconds 10]
                                      [--concurrency 4] [--results bench/results]

A writer ends tags one by one as a registry does (one ``UPDATE tag SET
lifetime_end_ms`` each, the end set so far back that the tag is due at once
whatever its namespace's window) and puts each one's ``tag-expired`` on the
requests topic at a fixed ``--rate``, for ``--seconds``, while `collector run`
(a process of its own, as in production) serves them. Before the clock starts
the registry's old due garbage is collected and one request is served, so
neither the group join nor older work is counted.

For each request: the time from its record's Kafka timestamp to the timestamp
of the last removal event it caused (matched by ``causationid``), or of its
tag's ``tag-removed`` if later (an earlier request of the same repository
collects every due tag there, under its own causation); p50, p99 and
max over all requests, requests per second offered and served, and the
backlog (published minus finished, sampled) over the run, with its slope while
the writer ran. Targets: p99 250 ms or less at 200/s; 500/s sustained with
p99 1 s or less, no backlog growing. Each rate runs on a database
(``d_bench_trickle_…``) and topics of its own, dropped afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import signal
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import RecordMetadata

from bench import report
from bench.collect import collect
from bench.harness import COLLECTOR, bench_settings, environment, scratch_database
from collector import kafka
from collector.clock import SystemClock
from collector.config import Settings
from collector.demo.seed import Shape, plan_registry, write
from collector.limits import engine_pool_size
from collector.logging import configure_logging
from events import TagExpired, request_event, to_record
from tests.pipeline import topics, until

SOURCE = "/bench/trickle"
#: Tags ended per repository on average: few, as in a registry of many repositories,
#: where one request rarely finds another's tag already due in its repository.
TAGS_PER_REPOSITORY = 4
#: A backlog growing faster than this share of the rate means the service falls behind.
GROWTH_SHARE = 0.05
#: Ends a tag now, with its end far enough in the past that its window has passed.
END_TAG = """
    UPDATE tag t SET lifetime_end_ms = $2 - n.removed_tag_expiration_s * 1000 - 1
    FROM repository r, namespace n
    WHERE t.id = $1 AND r.id = t.repository_id AND n.id = r.namespace_id
    RETURNING n.name AS namespace, r.name AS repository, r.id AS repository_id,
              t.name AS tag, t.id AS tag_id, t.lifetime_end_ms
"""
FINISHED = "(SELECT count(*) FROM gc.request WHERE finished_at IS NOT NULL)"


@dataclass(frozen=True)
class Sample:
    """The backlog at ``at_s`` seconds after the writer started."""

    at_s: float
    published: int
    finished: int


async def prepare(url: str, tags: int) -> list[int]:
    """Seed a registry with at least ``tags`` alive tags, collect what is already due,
    and return that many of them in a random order across repositories."""
    async with asyncpg.create_pool(url, min_size=2, max_size=engine_pool_size(4)) as pool:
        repositories = max(4, math.ceil(tags / TAGS_PER_REPOSITORY))
        async with pool.acquire() as conn:
            now = SystemClock().now_ms()
            await write(conn, plan_registry(Shape(repositories=repositories), now_ms=now, seed=6))
        await collect(pool, 500, 4)
        async with pool.acquire() as conn:
            await conn.execute("VACUUM ANALYZE")
            chosen: list[int] = await conn.fetchval(
                "SELECT array_agg(id) FROM (SELECT id FROM tag"
                " WHERE lifetime_end_ms IS NULL AND NOT immutable"
                " ORDER BY md5(id::text) LIMIT $1) t",
                tags,
            )
    if len(chosen) < tags:
        raise SystemExit(f"trickle: {len(chosen)} alive tags seeded, {tags} needed")
    return chosen


@dataclass
class Removals:
    """The removals topic read to its end: Kafka timestamps of the last event each
    request caused, and of each tag's ``tag-removed``."""

    by_cause: dict[str, int]
    by_tag: dict[int, int]

    def done_at(self, request_id: str, tag_id: int) -> int | None:
        """When the request's work was announced: its tag's removal (made under an earlier
        request's causation when that one collected the repository's due tags first) and
        every event it caused itself."""
        times = [t for t in (self.by_cause.get(request_id), self.by_tag.get(tag_id)) if t]
        return max(times) if times else None


async def read_removals(settings: Settings) -> Removals:
    consumer = AIOKafkaConsumer(enable_auto_commit=False, **kafka.client_options(settings))
    await consumer.start()
    try:
        assigned = [
            TopicPartition(settings.topic_removals, p) for p in range(settings.topic_partitions)
        ]
        consumer.assign(assigned)
        await consumer.seek_to_beginning(*assigned)
        ends = await consumer.end_offsets(assigned)
        removals = Removals({}, {})
        while [p for p in assigned if await consumer.position(p) < ends[p]]:
            for records in (await consumer.getmany(timeout_ms=200)).values():
                for record in records:
                    event = json.loads(record.value or b"{}")
                    cause = event.get("causationid")
                    removals.by_cause[cause] = max(
                        removals.by_cause.get(cause, 0), record.timestamp
                    )
                    if event.get("type") == "registry.gc.tag-removed":
                        removals.by_tag[event["data"]["tag_id"]] = record.timestamp
        return removals
    finally:
        await consumer.stop()


def percentile(values: list[int], share: float) -> int:
    """Nearest-rank percentile of sorted ``values``."""
    return values[max(0, math.ceil(share * len(values)) - 1)]


class Trickle:
    """One rate's run: the writer, the sampler, and what they saw."""

    def __init__(self, url: str, settings: Settings, tags: list[int], rate: float) -> None:
        self.url, self.settings, self.tags, self.rate = url, settings, tags, rate
        self.started = 0.0
        self.writing_s = 0.0
        #: Each request's id and its delivery (its metadata carries the record's timestamp).
        self.sent: dict[str, asyncio.Future[RecordMetadata]] = {}
        self.tag_of: dict[str, int] = {}
        self.samples: list[Sample] = []

    async def write(self, conn: asyncpg.Connection, producer: AIOKafkaProducer, tag_id: int) -> str:
        """End one tag and hand its request to the producer; returns the request's id."""
        row = await conn.fetchrow(END_TAG, tag_id, SystemClock().now_ms())
        if row is None:
            raise SystemExit(f"trickle: tag {tag_id} is gone before it ended")
        request = TagExpired(**dict(row))
        event = request_event(request, source=SOURCE)
        value, headers = to_record(event)
        self.tag_of[event.id] = tag_id
        self.sent[event.id] = await producer.send(
            self.settings.topic_requests,
            value,
            key=request.repository_path.encode(),
            headers=headers,
        )
        return event.id

    async def sample(self) -> None:
        conn = await asyncpg.connect(self.url)
        try:
            while True:
                done = await conn.fetchval(f"SELECT {FINISHED}") - 1  # less the warm-up
                at = time.monotonic() - self.started
                self.samples.append(Sample(round(at, 2), len(self.sent), done))
                await asyncio.sleep(0.25)
        finally:
            await conn.close()

    async def run(self, seconds: float) -> dict[str, object]:
        conn = await asyncpg.connect(self.url)
        producer = kafka.producer(self.settings)
        await producer.start()
        try:
            warm_up, *tags = self.tags
            await self.sent.pop(await self.write(conn, producer, warm_up))
            await until(lambda: conn.fetchval(f"SELECT {FINISHED} = 1"), 60)
            self.started = time.monotonic()
            sampler = asyncio.create_task(self.sample())
            for number, tag_id in enumerate(tags):
                due = self.started + number / self.rate
                if due - self.started >= seconds:
                    break
                await asyncio.sleep(due - time.monotonic())
                await self.write(conn, producer, tag_id)
            self.writing_s = time.monotonic() - self.started
            stamps = {i: (await delivery).timestamp for i, delivery in self.sent.items()}
            drained = (
                f"SELECT {FINISHED} = {len(stamps) + 1}"
                " AND NOT EXISTS (SELECT FROM gc.outbox WHERE published_at IS NULL)"
            )
            await until(lambda: conn.fetchval(drained), max(60.0, 10 * seconds))
            sampler.cancel()
            stages = await conn.fetch(
                "SELECT event_id, (extract(epoch FROM received_at) * 1000)::bigint AS received,"
                " (extract(epoch FROM finished_at) * 1000)::bigint AS finished FROM gc.request"
            )
        finally:
            await producer.stop()
            await conn.close()
        removals = await read_removals(self.settings)
        figure = self.figure(stamps, removals)
        figure["stages_p50_ms"] = self.stages(stamps, removals, stages)
        return figure

    def stages(
        self, stamps: dict[str, int], removals: Removals, rows: list[asyncpg.Record]
    ) -> dict[str, int]:
        """Where the time goes (medians): record to admitted by the intake, admitted to
        finished by a worker, finished to its last event on the topic (the relay)."""
        spans: dict[str, list[int]] = {"intake": [], "work": [], "relay": []}
        for row in rows:
            if (stamp := stamps.get(row["event_id"])) is None:
                continue
            done = removals.done_at(row["event_id"], self.tag_of[row["event_id"]])
            spans["intake"].append(row["received"] - stamp)
            spans["work"].append(row["finished"] - row["received"])
            if done is not None:
                spans["relay"].append(done - row["finished"])
        return {name: percentile(sorted(values), 0.5) for name, values in spans.items() if values}

    def figure(self, stamps: dict[str, int], removals: Removals) -> dict[str, object]:
        done = {i: removals.done_at(i, self.tag_of[i]) for i in stamps}
        latencies = sorted(at - stamps[i] for i, at in done.items() if at is not None)
        if not latencies:
            raise SystemExit("trickle: no request's removals reached the removals topic")
        serving_ms = max(at for at in done.values() if at is not None) - min(stamps.values())
        writing = [s for s in self.samples if s.at_s <= self.writing_s]
        tail = writing[len(writing) // 2 :]  # past the start's transient
        return {
            "rate": self.rate,
            "requests": len(stamps),
            "unannounced": len(stamps) - len(latencies),
            "p50_ms": percentile(latencies, 0.5),
            "p99_ms": percentile(latencies, 0.99),
            "max_ms": latencies[-1],
            "requests_per_s_offered": round(len(stamps) / self.writing_s, 1),
            "requests_per_s_served": round(len(stamps) * 1000 / serving_ms, 1),
            "backlog_at_end_of_writing": tail[-1].published - tail[-1].finished if tail else 0,
            "backlog_slope_per_s": round(slope(tail), 1),
            "backlog_grew": slope(tail) > GROWTH_SHARE * self.rate,
            "samples": [asdict(s) for s in self.samples],
        }


def slope(samples: list[Sample]) -> float:
    """Least-squares growth of the backlog, in requests per second."""
    if len(samples) < 2:
        return 0.0
    xs = [s.at_s for s in samples]
    ys = [s.published - s.finished for s in samples]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    spread = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / spread if spread else 0.0


async def trickle(rate: float, seconds: float, concurrency: int) -> dict[str, object]:
    """One rate on a registry, topics and service of its own."""
    async with scratch_database("trickle") as url:
        tags = await prepare(url, math.ceil(rate * seconds) + 1)
        settings = bench_settings(url, repository_concurrency=concurrency)
        async with topics(settings):
            with tempfile.TemporaryFile() as log:
                service = await asyncio.create_subprocess_exec(
                    *COLLECTOR,
                    "run",
                    env=environment(settings),
                    stdout=subprocess.DEVNULL,
                    stderr=log,
                )
                try:
                    return await Trickle(url, settings, tags, rate).run(seconds)
                except TimeoutError:
                    log.seek(0)
                    raise SystemExit(
                        f"trickle: the service fell silent: {log.read()[-2000:]!r}"
                    ) from None
                finally:
                    service.send_signal(signal.SIGTERM)
                    await asyncio.wait_for(service.wait(), 60)


def chart(figures: list[dict[str, object]], path: Path) -> None:
    """The backlog over time at each rate: flat while the service keeps up."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot
    except ImportError:
        return
    figure, axes = pyplot.subplots(figsize=(7, 4))
    for run in figures:
        samples = [Sample(**s) for s in run["samples"]]  # type: ignore[attr-defined]
        axes.plot(
            [s.at_s for s in samples],
            [s.published - s.finished for s in samples],
            label=f"{run['rate']:g}/s: p50 {run['p50_ms']} ms, p99 {run['p99_ms']} ms",
        )
    axes.set_xlabel("seconds since the writer started")
    axes.set_ylabel("backlog (requests published, not finished)")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path)
    pyplot.close(figure)


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, action="append", help="requests/s; repeatable")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--results", type=Path, default=Path("bench/results"))
    args = parser.parse_args(argv)
    rates = args.rate or [200.0, 500.0]
    configure_logging("warning")
    figures = [asyncio.run(trickle(rate, args.seconds, args.concurrency)) for rate in rates]
    for run in figures:
        print(
            f"{run['rate']:g} requests/s for {args.seconds:g} s: {run['requests']} requests,"
            f" p50 {run['p50_ms']} ms, p99 {run['p99_ms']} ms, max {run['max_ms']} ms;"
            f" offered {run['requests_per_s_offered']}/s, served {run['requests_per_s_served']}/s;"
            f" backlog {run['backlog_at_end_of_writing']} at the writer's end, slope"
            f" {run['backlog_slope_per_s']}/s ({'growing' if run['backlog_grew'] else 'steady'});"
            f" medians by stage (ms) {run['stages_p50_ms']}"
        )
    arguments = {"rates": rates, "seconds": args.seconds, "concurrency": args.concurrency}
    path = report.save("trickle", figures, arguments, args.results)
    chart(figures, path.with_suffix(".png"))
    print(f"results: {path}")
    return path


if __name__ == "__main__":
    main()
