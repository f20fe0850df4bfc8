"""Repository paths given on the command line: `namespace/repository`."""

from __future__ import annotations

import pytest

from collector.engine.repositories import split_path
from collector.errors import ConfigError


def test_split_simple_path() -> None:
    """ "ns/repo" splits into namespace and repository."""
    assert split_path("ns/repo") == ("ns", "repo")


def test_split_keeps_nested_repository_name() -> None:
    """Only the first slash separates: "ns/a/b" is repository "a/b" of namespace "ns"."""
    assert split_path("ns/a/b") == ("ns", "a/b")


@pytest.mark.parametrize("path", ["", "ns", "/repo", "ns/", "/", "ns//repo", "ns/a/"])
def test_split_rejects_incomplete_path(path: str) -> None:
    """A path without both a namespace and a repository is a configuration error naming it."""
    with pytest.raises(ConfigError, match="NAMESPACE/REPOSITORY") as raised:
        split_path(path)
    assert repr(path) in str(raised.value)
