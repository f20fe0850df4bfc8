"""The architecture as the imports show it: each part of `collector` imports only parts
below it (README, Layout), so there is no cycle; `events` imports no collector."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

#: Lowest first. A part may import any part of a lower layer, none of its own or a
#: higher one. A part is a package or a module directly under collector/.
LAYERS: list[set[str]] = [
    {"errors", "limits", "health"},
    {"config", "logging", "metrics", "clock"},
    {"backoff"},
    {"db", "kafka"},
    {"partitioned_consumer"},
    {"outbox", "dead_letters"},
    {"engine"},
    {"work"},
    {"intake"},
    {"publish", "verify", "sinks", "service"},
    {"demo"},
    {"cli"},
    {"__main__"},
]
LAYER_OF = {part: index for index, layer in enumerate(LAYERS) for part in layer}


def part_of(module: str) -> str | None:
    """The part of `collector` a module belongs to; None outside `collector`."""
    names = module.split(".")
    return names[1] if names[0] == "collector" and len(names) > 1 else None


def imports(path: Path) -> Iterator[tuple[int, str]]:
    """(line, module) for each absolute import of ``path``, in function bodies too
    (the command line imports lazily); ``from collector import x`` names collector.x."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "collector":
                yield from ((node.lineno, f"collector.{alias.name}") for alias in node.names)
            else:
                yield node.lineno, node.module


def modules(package: str) -> Iterator[tuple[Path, str]]:
    for path in sorted((ROOT / package).rglob("*.py")):
        yield path, ".".join(path.relative_to(ROOT).with_suffix("").parts)


def test_every_part_of_the_collector_has_a_layer() -> None:
    parts = {part for _, module in modules("collector") if (part := part_of(module))}
    unplaced = parts - set(LAYER_OF) - {"__init__"}
    assert unplaced == set(), f"add to LAYERS: {sorted(unplaced)}"


def test_no_part_imports_its_own_layer_or_a_higher_one() -> None:
    upward = []
    for path, module in modules("collector"):
        source = part_of(module)
        if source is None or source == "__init__":
            continue
        for line, imported in imports(path):
            target = part_of(imported)
            if target is None or target == source:
                continue
            if LAYER_OF[target] >= LAYER_OF[source]:
                upward.append(f"{path.relative_to(ROOT)}:{line} {source} -> {target}")
    assert upward == []


def test_events_imports_no_collector() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{line} {imported}"
        for path, _ in modules("events")
        for line, imported in imports(path)
        if imported.split(".")[0] == "collector"
    ]
    assert found == []


def test_an_upward_import_is_found(tmp_path: Path) -> None:
    """The check can fail: an engine module importing the service is named."""
    module = tmp_path / "runner.py"
    module.write_text("def f() -> None:\n    from collector.service import Service\n")

    [(line, imported)] = imports(module)

    assert (line, part_of(imported)) == (2, "service")
    assert LAYER_OF["service"] >= LAYER_OF["engine"]
