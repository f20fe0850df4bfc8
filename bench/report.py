"""Result files: one JSON document per run, named by scenario and time, with the
machine it ran on, so a figure is never quoted without where and when it was taken."""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


def save(
    kind: str, figures: Sequence[dict[str, Any]], arguments: dict[str, Any], results: Path
) -> Path:
    """Write ``results/<kind>-<time>.json``; returns its path (a chart goes beside it)."""
    results.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = results / f"{kind}-{stamp}.json"
    machine = {"cores": os.cpu_count(), "python": platform.python_version()}
    document = {"date": stamp, "machine": machine, "arguments": arguments, "figures": figures}
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    return path


def bars(
    path: Path, labels: Sequence[str], values: Sequence[float], ylabel: str, target: float
) -> None:
    """A bar per figure with the issue's target as a line, when matplotlib is installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot
    except ImportError:
        return
    figure, axes = pyplot.subplots(figsize=(6, 4))
    axes.bar(labels, values)
    axes.axhline(target, color="red", linestyle="--", label=f"target {target:g}")
    axes.set_ylabel(ylabel)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path)
    pyplot.close(figure)
