"""The benchmark's harness, run small so that it cannot rot: every contender ends in the
same registry, and a contender that does not is caught; the trickle, growth and memory
scenarios run end to end and write their figures. No timing is asserted."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench import compare, growth, memory, trickle


@pytest.mark.usefixtures("restore_logging")  # main() configures logging, as a command does
def test_a_small_comparison_runs_every_contender_to_the_same_registry(tmp_path: Path) -> None:
    path = compare.main(["--repositories", "6", "--results", str(tmp_path)])

    document = json.loads(path.read_text(encoding="utf-8"))
    figures = document["figures"]
    assert {(f["scenario"], f["contender"]) for f in figures} == {
        (scenario, contender) for scenario in compare.SCENARIOS for contender in compare.CONTENDERS
    }
    for scenario in compare.SCENARIOS:
        removed = {
            (f["rows_removed"], f["objects_removed"])
            for f in figures
            if f["scenario"] == scenario and f["contender"] != "plan"
        }
        ((rows, objects),) = removed  # the same for all: their end states were compared
        assert rows > objects > 0
        (planned,) = [f for f in figures if f["scenario"] == scenario and f["contender"] == "plan"]
        assert (planned["rows_removed"], planned["objects_removed"]) == (0, objects)
    assert document["machine"]["cores"] >= 1
    assert path.with_suffix(".png").stat().st_size > 0


async def test_a_contender_that_leaves_garbage_behind_fails_the_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def lazy(url: str, now_ms: int) -> None:
        """Deletes nothing."""

    monkeypatch.setitem(compare.RUNNERS, "floor", lazy)
    template, now_ms = await compare.generate("purge", 6, seed=1)
    try:
        with pytest.raises(SystemExit, match="purge: floor ends in another state than collector"):
            await compare.contend("purge", template, now_ms, ["collector", "floor"])
    finally:
        await compare.drop_database(template)


async def test_a_plan_that_miscounts_fails_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    planned = compare.run_plan

    async def off_by_one(url: str, now_ms: int) -> int:
        return await planned(url, now_ms) + 1

    monkeypatch.setattr(compare, "run_plan", off_by_one)
    template, now_ms = await compare.generate("expiry", 6, seed=1)
    try:
        miscounted = r"expiry: the plan counted \d+ objects, collector removed"
        with pytest.raises(SystemExit, match=miscounted):
            await compare.contend("expiry", template, now_ms, ["collector", "plan"])
    finally:
        await compare.drop_database(template)


def figures_of(path: Path) -> list[dict[str, Any]]:
    """The result's figures, once its machine and date are checked."""
    document = json.loads(path.read_text(encoding="utf-8"))
    assert document["machine"]["cores"] >= 1
    assert document["date"]
    figures: list[dict[str, Any]] = document["figures"]
    return figures


@pytest.mark.usefixtures("restore_logging")
def test_a_short_trickle_times_every_request_to_its_last_removal(tmp_path: Path) -> None:
    path = trickle.main(["--rate", "20", "--seconds", "1", "--results", str(tmp_path)])

    (run,) = figures_of(path)
    assert run["rate"] == 20
    assert run["requests"] == 20
    assert run["unannounced"] == 0  # every request's removals were read off the topic
    for field in ("p50_ms", "p99_ms", "max_ms", "requests_per_s_offered", "backlog_grew"):
        assert field in run
    assert set(run["stages_p50_ms"]) == {"intake", "work", "relay"}
    assert run["samples"]
    assert path.with_suffix(".png").stat().st_size > 0


@pytest.mark.usefixtures("restore_logging")
def test_growth_collects_the_same_garbage_in_a_small_and_a_larger_registry(
    tmp_path: Path,
) -> None:
    path = growth.main(["--repositories", "3", "--scale", "2", "--results", str(tmp_path)])

    base, larger = figures_of(path)
    assert (base["registry"], larger["registry"]) == ("base", "2x")
    assert larger["rows"] > base["rows"]
    assert base["time_ratio"] == 1
    assert "time_ratio" in larger
    assert path.with_suffix(".png").stat().st_size > 0


@pytest.mark.usefixtures("restore_logging")
def test_memory_measures_both_commands_on_the_same_registry(tmp_path: Path) -> None:
    path = memory.main(["--rows", "2000", "--results", str(tmp_path)])

    collected, served = figures_of(path)
    assert collected["command"] == "collector collect --all --purge"
    assert served["command"].startswith("collector run")
    assert collected["rows"] == served["rows"]
    assert collected["rows_removed"] == served["rows_removed"]  # the same garbage, both ways
    for figure in (collected, served):
        assert figure["peak_rss_mib"] > 0
    assert served["requests"] > 0
    assert path.with_suffix(".png").stat().st_size > 0
