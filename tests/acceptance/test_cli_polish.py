"""The command line's manners: --version, completion, help without placeholders, a
misspelled variable named, the configuration shown with its secrets masked, and a
--json summary scripts can parse on every command that prints one."""

from __future__ import annotations

import json
import re
from importlib import metadata
from pathlib import Path

import asyncpg
import pytest

from collector.clock import SystemClock
from tests.acceptance.conftest import CreateDatabase, environment, run_collector
from tests.pipeline import pipeline_settings, read_topic, topics
from tests.registry import Registry

COMMANDS = [
    ["migrate"],
    ["collect"],
    ["verify"],
    ["demo"],
    ["scan"],
    ["run"],
    ["audit"],
    ["dead-letters"],
    ["publish", "tag-expired"],
    ["publish", "repo-sweep"],
    ["sink", "blob-deleter"],
    ["config", "show"],
]


def test_version_prints_the_installed_version() -> None:
    result = run_collector("--version")

    assert result.returncode == 0, result.stderr
    assert result.stdout == f"collector {metadata.version('registry-collector')}\n"


def test_completion_script_is_offered_for_bash() -> None:
    # Named, not detected from the process tree (typer's switch for that).
    env = {"_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"}
    result = run_collector("--show-completion", "bash", env=env)

    assert result.returncode == 0, result.stderr
    assert "_COLLECTOR_COMPLETE" in result.stdout
    assert "complete" in result.stdout


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_help_shows_no_type_placeholder_and_each_variable_once(command: list[str]) -> None:
    result = run_collector(*command, "--help")

    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())
    assert not re.search(r"<(str|int|float|list|bool|path)[^>]*>", text), text
    assert "[env: " not in text
    for variable in set(re.findall(r"COLLECTOR_[A-Z_]+", text)):
        assert text.count(f"env var: {variable}") <= 1, variable


def test_a_misspelled_variable_is_named_with_the_one_it_resembles() -> None:
    result = run_collector(
        "config", "show", "--json", env={"COLLECTOR_DATABSE_URL": "postgresql://x"}
    )

    assert result.returncode == 0, result.stderr
    [warning] = [json.loads(line) for line in result.stderr.splitlines()]
    assert warning["event"] == "unknown_variable"
    assert warning["variable"] == "COLLECTOR_DATABSE_URL"
    assert "did you mean COLLECTOR_DATABASE_URL?" in warning["hint"]


def test_config_show_masks_passwords_and_names_sources() -> None:
    url = "postgresql://gc:url-secret@db.example:5432/registry?password=query-secret"
    env = {
        "COLLECTOR_DATABASE_URL": url,
        "COLLECTOR_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "COLLECTOR_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "COLLECTOR_KAFKA_SASL_USERNAME": "gc",
        "COLLECTOR_KAFKA_SASL_PASSWORD": "sasl-secret",
    }

    shown = run_collector("config", "show", "--json", env=env)
    table = run_collector("config", "show", env=env)

    assert shown.returncode == 0, shown.stderr
    assert table.returncode == 0, table.stderr
    for output in (shown.stdout, table.stdout + table.stderr):
        for secret in ("url-secret", "query-secret", "sasl-secret"):
            assert secret not in output
    rows = {row["variable"]: row for row in map(json.loads, shown.stdout.splitlines())}
    assert rows["COLLECTOR_DATABASE_URL"] == {
        "setting": "database_url",
        "variable": "COLLECTOR_DATABASE_URL",
        "value": "postgresql://gc:********@db.example:5432/registry?password=********",
        "source": "environment",
    }
    assert rows["COLLECTOR_KAFKA_SASL_PASSWORD"]["value"] == "********"
    assert rows["COLLECTOR_KAFKA_SASL_USERNAME"]["value"] == "gc"
    assert rows["COLLECTOR_GROUP_ID"] == {
        "setting": "group_id",
        "variable": "COLLECTOR_GROUP_ID",
        "value": "registry-collector",
        "source": "default",
    }


def test_a_bad_flag_value_names_the_flag() -> None:
    result = run_collector("sink", "blob-deleter", "--storage-root", ".", "--max-missing", "2")

    assert result.returncode == 2
    assert "--max-missing" in result.stderr


async def test_publish_scan_run_and_verify_print_json(create_database: CreateDatabase) -> None:
    """Each summary parses: publish's request, scan's lines and summary, run's summary
    and verify's report, on one expired tag."""
    url = await create_database("cli_json")
    conn = await asyncpg.connect(url)
    try:
        registry = Registry(conn, now_ms=SystemClock().now_ms())
        repository = await registry.repository(await registry.namespace("acme"), "app")
        await registry.expired_tag(repository, await registry.manifest(repository), "v1")
    finally:
        await conn.close()
    async with topics(pipeline_settings(url)) as settings:
        env = environment(settings, url, COLLECTOR_LOG_LEVEL="warning")

        published = run_collector("publish", "tag-expired", "acme/app", "v1", "--json", env=env)
        scanned = run_collector("scan", "--json", env=env)
        served = run_collector("run", "--exit-when-idle", "1", "--json", env=env)
        requests = await read_topic(settings.topic_requests)
    verified = run_collector("verify", "--json", "--database-url", url)

    assert published.returncode == 0, published.stderr
    [request] = map(json.loads, published.stdout.splitlines())
    assert request["published"] == "tag-expired"
    assert request["data"]["tag"] == "v1"
    assert scanned.returncode == 0, scanned.stderr
    *lines, summary = map(json.loads, scanned.stdout.splitlines())
    assert [line["repository"] for line in lines] == ["acme/app"]
    assert summary == {"summary": {"published": 1, "skipped": [], "sweep": None}}
    assert {r.event["id"] for r in requests} == {request["id"], lines[0]["id"]}
    assert served.returncode == 0, served.stderr
    run_summary = json.loads(served.stdout)["summary"]
    assert run_summary["received"] == 2
    assert run_summary["published"] == 2  # the tag and its manifest
    assert verified.returncode == 0, verified.stderr
    assert json.loads(verified.stdout)["ok"] is True


async def test_migrate_and_demo_print_json(create_database: CreateDatabase, tmp_path: Path) -> None:
    """migrate says what it applied and created; demo's summary parses on stdout (its
    progress on stderr), on a fresh database it migrates itself."""
    url = await create_database("cli_json_demo", template="template0")
    settings = pipeline_settings(url)
    async with topics(settings):
        env = environment(settings, url, COLLECTOR_LOG_LEVEL="warning")
        env["COLLECTOR_SINK_GROUP_ID"] = settings.group_id + ".blobs"
        migrated = run_collector("migrate", "--json", "--skip-topics", env=env)
        again = run_collector("migrate", "--json", env=env)
        demo = run_collector(
            "demo", "--repositories", "3", "--storage-root", str(tmp_path), "--json", env=env
        )

    assert migrated.returncode == 0, migrated.stderr
    applied = json.loads(migrated.stdout)["summary"]
    assert applied["migrations_applied"][0] == "registry"
    assert applied["topics_created"] is None
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["summary"] == {
        "migrations_applied": [],
        "topics_created": [],
    }
    assert demo.returncode == 0, demo.stderr
    summary = json.loads(demo.stdout)["summary"]
    assert summary["ok"] is True
    assert summary["verification"]["dangling"] == []
    assert summary["storage"]["orphaned"] == summary["storage"]["missing"] == 0
    assert summary["service"]["published"] == sum(summary["removed"].values())
