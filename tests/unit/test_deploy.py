"""The dashboard and the alert rules in deploy/ name only what the services export."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY
from prometheus_client.metrics import MetricWrapperBase

from collector import metrics

DEPLOY = Path(__file__).parents[2] / "deploy"
DASHBOARD = DEPLOY / "grafana" / "registry-gc.json"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
#: A series of ours in a PromQL expression, and the selector after it, if any.
SERIES = re.compile(r"\b(registry_gc_[a-z0-9_]+)(\{[^}]*\})?")
#: What each kind of metric is scraped as (prometheus_client names the family without
#: the suffixes).
SUFFIXES = {
    "counter": ("_total",),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count"),
}


def exported() -> dict[str, tuple[str, ...]]:
    """Every series name the collector's metrics are scraped as, with its labels."""
    labels = {
        metric._name: metric._labelnames  # the public API has no label names
        for metric in vars(metrics).values()
        if isinstance(metric, MetricWrapperBase)
    }
    return {
        family.name + suffix: labels[family.name]
        for family in REGISTRY.collect()
        if family.name in labels
        for suffix in SUFFIXES[family.type]
    }


def dashboard_expressions() -> Iterator[str]:
    board: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    for panel in board["panels"]:
        for target in panel["targets"]:
            yield target["expr"]


def alert_expressions() -> Iterator[str]:
    rules: dict[str, Any] = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    for group in rules["groups"]:
        for rule in group["rules"]:
            yield rule["expr"]


@pytest.mark.parametrize("source", [dashboard_expressions, alert_expressions])
def test_every_series_named_is_exported_with_the_labels_selected(source: Any) -> None:
    expressions = list(source())
    assert expressions
    series = exported()
    for expression in expressions:
        found = SERIES.findall(expression)
        assert found, f"names none of our metrics: {expression}"
        for name, selector in found:
            assert name in series, f"not exported: {name} (in {expression})"
            for label in re.findall(r"([a-z_]+)\s*=~?", selector):
                assert label in series[name], f"{name} has no label {label}"
        for grouped in re.findall(r"by \(([^)]*)\)", expression):
            for label in (part.strip() for part in grouped.split(",")):
                assert label == "le" or any(label in series[name] for name, _ in found), (
                    f"grouped by {label}, which none of {found} has"
                )


def test_every_alert_has_a_runbook_section_in_the_operator_guide() -> None:
    """An alert names the section of docs/operations.md that says what to do."""
    guide = (Path(__file__).parents[2] / "docs" / "operations.md").read_text(encoding="utf-8")
    headings = {
        "docs/operations.md#" + re.sub(r"[^a-z0-9 -]", "", line[4:].lower()).replace(" ", "-")
        for line in guide.splitlines()
        if line.startswith("### ")
    }
    rules: dict[str, Any] = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    for group in rules["groups"]:
        for rule in group["rules"]:
            assert rule["annotations"]["runbook"] in headings, rule["alert"]
