"""How commands print: lines and JSON for scripts on stdout, tables for people."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any

import typer

if TYPE_CHECKING:
    from rich.console import Console


def tables() -> Console:
    """Where tables go: stdout on a terminal, stderr when stdout is a pipe, so that a
    script reading stdout gets only lines (or JSON) it can parse."""
    from rich.console import Console  # not on the way to `--help`

    return Console(highlight=False, stderr=not sys.stdout.isatty())


def json_line(value: Any) -> None:
    """One JSON value on one line of stdout."""
    typer.echo(json.dumps(value, separators=(",", ":")))
