"""`collector --help` starts fast: the command line's surface imports no driver, no
pydantic, no structlog and no rich; a command imports them when it runs."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("asyncpg", "aiokafka", "pydantic", "pydantic_settings", "structlog", "rich")


def test_the_command_line_surface_imports_nothing_heavy() -> None:
    probe = (
        "import sys, collector.cli;"
        f" print(sorted({{m.split('.')[0] for m in sys.modules}} & {set(HEAVY)!r}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )

    assert result.stdout.strip() == "[]"


def test_help_lists_every_command_without_importing_them() -> None:
    probe = (
        "import sys; from collector.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & {set(HEAVY)!r}), file=sys.stderr)"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )

    assert "dead-letters" in result.stdout
    assert result.stderr.strip() == "[]"
