"""What every command does first: its settings (flags winning over the environment), the
log level among them, and only then the warnings about unknown COLLECTOR_ variables."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from collector.cli import _settings
from collector.cli._settings import configured


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No COLLECTOR_* variable of the calling shell leaks into a test."""
    for name in list(os.environ):
        if name.upper().startswith("COLLECTOR_"):
            monkeypatch.delenv(name)


@pytest.fixture
def levels(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The levels logging gets configured at (left as it is)."""
    configured_at: list[str] = []
    monkeypatch.setattr(_settings, "configure_logging", configured_at.append)
    return configured_at


def test_logging_is_configured_at_the_settings_level(
    monkeypatch: pytest.MonkeyPatch, levels: list[str]
) -> None:
    """info by default; COLLECTOR_LOG_LEVEL over that; --log-level over both."""
    configured(log_level=None)
    monkeypatch.setenv("COLLECTOR_LOG_LEVEL", "error")
    configured(log_level=None)
    configured(log_level="debug")

    assert levels == ["info", "error", "debug"]


def test_a_command_s_own_default_level_yields_to_the_variable_and_the_flag(
    monkeypatch: pytest.MonkeyPatch, levels: list[str]
) -> None:
    """`demo` logs from warning up unless --log-level or COLLECTOR_LOG_LEVEL (info
    included) says otherwise."""
    configured(default_log_level="warning", log_level=None)
    configured(default_log_level="warning", log_level="info")
    monkeypatch.setenv("COLLECTOR_LOG_LEVEL", "info")
    configured(default_log_level="warning", log_level=None)

    assert levels == ["warning", "info", "info"]


@pytest.mark.usefixtures("restore_logging")
def test_an_unknown_variable_is_warned_about_as_a_log_line_on_stderr(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The warning comes once logging is configured: a JSON line on stderr (off a
    terminal), never on stdout, where scripts read a command's output."""
    monkeypatch.setenv("COLLECTOR_DATABSE_URL", "postgresql://x")

    configured(log_level="info")

    out, err = capsys.readouterr()
    assert out == ""
    [warning] = [json.loads(line) for line in err.splitlines()]
    assert (warning["event"], warning["variable"]) == ("unknown_variable", "COLLECTOR_DATABSE_URL")


def collector(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The command line, run before it reaches a database or a broker."""
    clean = {k: v for k, v in os.environ.items() if not k.upper().startswith("COLLECTOR_")}
    return subprocess.run(
        [sys.executable, "-m", "collector", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**clean, **(env or {})},
        check=False,
    )


@pytest.mark.parametrize(
    ("args", "env", "error"),
    [
        (
            ["config", "show"],
            {"COLLECTOR_LOG_LEVEL": "loud"},
            "invalid COLLECTOR_LOG_LEVEL: expected one of debug, info, warning, error, not 'loud'",
        ),
        (
            ["config", "show", "--log-level", "loud"],
            {},
            "Invalid value for '--log-level': invalid log level 'loud': expected one of"
            " debug, info, warning, error",
        ),
        (
            ["sink", "blob-deleter"],
            {},
            "no storage root: give --storage-root DIR or COLLECTOR_STORAGE_ROOT",
        ),
        (
            ["sink", "blob-deleter"],
            {"COLLECTOR_STORAGE_ROOT": "/no/such/storage"},
            "storage root /no/such/storage is not a directory",
        ),
    ],
    ids=["bad variable", "bad flag", "no storage root", "storage root missing"],
)
def test_a_bad_log_level_or_storage_root_exits_2_with_one_line(
    args: list[str], env: dict[str, str], error: str
) -> None:
    """Named by the flag or the variable at fault, before anything is touched."""
    result = collector(*args, env=env)

    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [f"collector: error: {error}"]


def test_the_storage_root_variable_is_checked_like_the_flag(tmp_path: Path) -> None:
    """A root from COLLECTOR_STORAGE_ROOT is refused as one given by the flag is: a folder
    without the digest layout is no storage."""
    result = collector("sink", "blob-deleter", env={"COLLECTOR_STORAGE_ROOT": str(tmp_path)})

    assert result.returncode == 2, result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith(f"collector: error: storage root {tmp_path} has no sha256/ directory")
