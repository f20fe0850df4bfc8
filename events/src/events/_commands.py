"""Causation ids the collector mints for work no request asked for: `collector collect`
and the orphan sweep of `collector scan --orphans`. A removal they caused names no
request, but its `causationid` still says which command, and which run, removed it."""

from __future__ import annotations

import uuid
from typing import Literal

Command = Literal["collect", "scan"]

#: The prefix of the causation ids each command mints.
_PREFIXES: dict[Command, str] = {"collect": "cli-", "scan": "scan-"}


def command_causation_id(command: Command) -> str:
    """A fresh causation id for one run of ``command``."""
    return f"{_PREFIXES[command]}{uuid.uuid4()}"


def command_of(causation_id: str) -> Command | None:
    """The command that minted ``causation_id``, if one did."""
    for command, prefix in _PREFIXES.items():
        if causation_id.startswith(prefix):
            return command
    return None
