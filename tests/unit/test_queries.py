"""Named SQL queries: parsing `-- name:` sections and loading the shipped files."""

from __future__ import annotations

from importlib.resources import files

import pytest

from collector.db.queries import load_queries, parse_queries

SQL_FILES = sorted(
    entry.name
    for entry in files("collector.db").joinpath("sql").iterdir()
    if entry.name.endswith(".sql")
)


def test_parse_splits_named_sections() -> None:
    """Each `-- name: x` header starts a query called x that runs to the next header."""
    text = "-- name: first\nSELECT 1\n\n-- name: second\nSELECT 2\nFROM t\n"
    assert parse_queries(text) == {"first": "SELECT 1", "second": "SELECT 2\nFROM t"}


def test_parse_keeps_description_comments_in_body() -> None:
    """The comment lines after a header stay in the query body, before the SQL."""
    text = "-- name: lock\n-- Lock the rows.\n-- $1 bigint[] ids\nSELECT id FROM t FOR UPDATE\n"
    assert parse_queries(text) == {
        "lock": "-- Lock the rows.\n-- $1 bigint[] ids\nSELECT id FROM t FOR UPDATE"
    }


def test_parse_strips_surrounding_whitespace() -> None:
    """Blank lines and indentation around a body are stripped; inner lines are kept."""
    text = "-- name: q\n\n   \n  SELECT a,\n         b\n  FROM t  \n\n\n"
    assert parse_queries(text) == {"q": "SELECT a,\n         b\n  FROM t"}


def test_parse_tolerates_trailing_space_after_name() -> None:
    """A header with trailing whitespace still names the query."""
    assert parse_queries("-- name: q   \nSELECT 1") == {"q": "SELECT 1"}


def test_parse_header_must_start_a_line() -> None:
    """`-- name:` inside a line is part of the body, not a new query."""
    text = "-- name: q\nSELECT 1 -- name: not_a_query\n"
    assert parse_queries(text) == {"q": "SELECT 1 -- name: not_a_query"}


def test_parse_without_header_has_no_queries() -> None:
    """Text with no header holds no named query."""
    assert parse_queries("SELECT 1\n") == {}


def test_parse_rejects_duplicate_name() -> None:
    """Two sections with the same name raise ValueError naming it."""
    text = "-- name: q\nSELECT 1\n-- name: other\nSELECT 2\n-- name: q\nSELECT 3\n"
    with pytest.raises(ValueError, match="duplicate query name 'q'"):
        parse_queries(text)


def test_sql_files_are_found() -> None:
    """The package ships SQL files for the tests below to load."""
    assert "blobs.sql" in SQL_FILES
    assert len(SQL_FILES) >= 2


@pytest.mark.parametrize("filename", SQL_FILES)
def test_load_shipped_file(filename: str) -> None:
    """Every shipped SQL file loads, with at least one non-empty named query."""
    queries = load_queries(filename)
    assert queries
    for name, body in queries.items():
        assert name.isidentifier()
        assert body.strip()
        assert "-- name:" not in body


def test_load_missing_file_fails() -> None:
    """Loading a file that does not exist raises, rather than giving no queries."""
    with pytest.raises(FileNotFoundError):
        load_queries("no_such_file.sql")
