"""Benchmark (d), growth: whether collection costs follow the garbage or the registry.

    .venv/bin/python -m bench.growth [--repositories 60] [--scale 10] [--results bench/results]

The same garbage (one namespace of ``--repositories`` repositories, half its
tags expired and a fifth of them marked for deletion) is collected with
``collect --all --purge``'s engine in a registry of about ``--repositories``
live repositories and in one ``--scale`` times larger (bench.collect's
``garbage_vs_size``). The target is a time ratio of 1.3 or less for 10x the
registry. Runs on a database of its own (``d_bench_growth_…``), dropped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import uuid
from pathlib import Path

from bench import report
from bench.collect import garbage_vs_size
from bench.compare import drop_database
from collector.logging import configure_logging


async def growth(repositories: int, scale: int, concurrency: int) -> list[dict[str, object]]:
    """Both collections and their ratio, as result figures."""
    database = f"d_bench_growth_{uuid.uuid4().hex[:8]}"
    try:
        base, larger = await garbage_vs_size(
            repositories, scale, 500, concurrency, pre_oci=True, database=database
        )
    finally:
        await drop_database(database)
    return [
        {
            "registry": name,
            "rows": sized.rows,
            "objects_removed": sized.objects,
            "seconds": round(sized.seconds, 3),
            "time_ratio": round(sized.seconds / base.seconds, 3),
        }
        for name, sized in (("base", base), (f"{scale}x", larger))
    ]


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repositories", type=int, default=60)
    parser.add_argument("--scale", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--results", type=Path, default=Path("bench/results"))
    args = parser.parse_args(argv)
    configure_logging("warning")
    figures = asyncio.run(growth(args.repositories, args.scale, args.concurrency))
    arguments = {"repositories": args.repositories, "scale": args.scale}
    path = report.save("growth", figures, arguments, args.results)
    seconds = [float(str(figure["seconds"])) for figure in figures]
    labels = [str(figure["registry"]) for figure in figures]
    report.bars(path.with_suffix(".png"), labels, seconds, "seconds", target=1.3 * seconds[0])
    print(f"results: {path}")
    return path


if __name__ == "__main__":
    main()
