"""Named SQL queries kept in ``sql/*.sql`` files, procrastinate style.

A file holds queries separated by ``-- name: <query_name>`` headers; the
comment lines after a header describe the query and its ``$n`` parameters.
"""

from __future__ import annotations

import re
from importlib.resources import files

_HEADER = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


def parse_queries(text: str) -> dict[str, str]:
    parts = _HEADER.split(text)
    queries: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in queries:
            raise ValueError(f"duplicate query name {name!r}")
        queries[name] = body.strip()
    return queries


def load_queries(filename: str) -> dict[str, str]:
    """The queries of ``collector/db/sql/<filename>``, by name."""
    return parse_queries(files("collector.db").joinpath("sql", filename).read_text())
