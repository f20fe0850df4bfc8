"""The benchmark's harness, run small so that it cannot rot: every contender ends in the
same registry, and a contender that does not is caught. No timing is asserted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import compare


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
