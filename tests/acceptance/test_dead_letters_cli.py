"""`collector dead-letters` as an operator runs it: list what `collector run` refused,
then resubmit a refused purge once its repository is marked for deletion."""

from __future__ import annotations

import base64
import json
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
import pytest

from collector.clock import SystemClock
from collector.config import Settings
from events import CONTENT_TYPE, RepoDeleted, RepoSweep
from tests.acceptance.conftest import (
    CreateDatabase,
    environment,
    run_collector,
    single_error_line,
)
from tests.conftest import TEST_DB
from tests.pipeline import Received, Record, pipeline_settings, produce, read_topic, request, topics
from tests.registry import Registry

HEADERS = [("content-type", CONTENT_TYPE.encode())]
KEY = b"acme/web"
NOT_JSON = b'{"specversion": "1.0",'
NOT_UTF8 = b"\x80\x81 not utf-8"


@dataclass
class Refused:
    """A registry whose live acme/web was sent hostile requests that `collector run`
    refused; the original records by (partition, offset)."""

    settings: Settings
    url: str
    env: dict[str, str]
    repository_id: int
    #: The values of the refused purge and of the request of an unknown type.
    purge: bytes
    unknown: bytes
    originals: dict[tuple[int, int], Received]

    def collector(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run_collector(*args, env=self.env, timeout=120)

    def at(self, value: bytes) -> str:
        """Where the original record with that value sits: partition/offset."""
        [(partition, offset)] = [at for at, r in self.originals.items() if r.value == value]
        return f"{partition}/{offset}"

    def origin(self, value: bytes) -> str:
        """Where the original record with that value sits: topic/partition/offset."""
        return f"{self.settings.topic_requests}/{self.at(value)}"


def _json_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("{")]


def unknown_type(repository_id: int) -> bytes:
    """A well-formed request of a type the collector does not know."""
    sweep = request(RepoSweep(namespace="acme", repository="web", repository_id=repository_id))
    assert sweep.value is not None
    event = json.loads(sweep.value)
    event["type"] = "registry.gc.everything-deleted"
    return json.dumps(event).encode()


@pytest.fixture
async def refused(create_database: CreateDatabase) -> AsyncIterator[Refused]:
    """acme/web live with a tagged manifest; four requests for it refused by `collector
    run` (two malformed values, an unknown type, a purge of the live repository), and a
    record on the dead-letter topic that is no dead letter."""
    url = await create_database(f"{TEST_DB}_dead_letters")
    conn = await asyncpg.connect(url)
    try:
        registry = Registry(conn, now_ms=SystemClock().now_ms())
        web = await registry.repository(await registry.namespace("acme"), "web")
        await registry.tag(web, await registry.manifest(web, blobs=(await registry.blob(),)))
    finally:
        await conn.close()
    async with topics(pipeline_settings(url)) as settings:
        purge = request(RepoDeleted(namespace="acme", repository="web", repository_id=web))
        unknown = unknown_type(web)
        hostile = [
            Record(KEY, NOT_JSON, HEADERS),
            Record(KEY, NOT_UTF8, HEADERS),
            Record(KEY, unknown, HEADERS),
            purge,
        ]
        await produce(settings.topic_requests, hostile)
        env = environment(settings, url, COLLECTOR_LOG_LEVEL="warning")
        ran = run_collector("run", "--exit-when-idle", "1", env=env, timeout=120)
        assert ran.returncode == 0, ran.stderr
        await produce(settings.topic_dead_letter, [Record(KEY, b"not a dead letter")])
        originals = {(r.partition, r.offset): r for r in await read_topic(settings.topic_requests)}
        assert purge.value is not None
        yield Refused(settings, url, env, web, purge.value, unknown, originals)


async def test_lists_each_refused_record_with_its_reason_and_origin(refused: Refused) -> None:
    """One line per refused record (time, reason, origin, key, detail), the unreadable
    record by its own offset, and the counts by reason on stderr; exit 0."""
    result = refused.collector("dead-letters")

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 5
    by_origin = {line.split()[2]: line.split(maxsplit=4) for line in lines[:4]}
    assert {origin: fields[1] for origin, fields in by_origin.items()} == {
        refused.origin(NOT_JSON): "malformed-json",
        refused.origin(NOT_UTF8): "malformed-json",
        refused.origin(refused.unknown): "unknown-type",
        refused.origin(refused.purge): "repository-not-marked",
    }
    assert {fields[3] for fields in by_origin.values()} == {"acme/web"}
    not_marked = by_origin[refused.origin(refused.purge)]
    assert not_marked[4].startswith("repository acme/web is normal, not marked_for_deletion")
    assert lines[4].startswith(f"unreadable {refused.settings.topic_dead_letter}/0/4: ")
    assert result.stderr.splitlines()[-1] == (
        "dead-letters: 4 listed (malformed-json 2, repository-not-marked 1, unknown-type 1),"
        " 0 duplicate(s), 1 unreadable"
    )


async def test_reason_filters_and_json_counts_match(refused: Refused) -> None:
    """`--reason` selects by reason (repeatable); `--json` prints one object per dead
    letter with the original record, the summary last, and its counts match."""
    only = refused.collector("dead-letters", "--reason", "repository-not-marked")
    assert only.returncode == 0, only.stderr
    [line, unreadable] = only.stdout.splitlines()
    assert line.split()[1] == "repository-not-marked"
    assert unreadable.startswith("unreadable ")

    result = refused.collector(
        "dead-letters", "--json", "--reason", "malformed-json", "--reason", "unknown-type"
    )

    assert result.returncode == 0, result.stderr
    *entries, summary = [json.loads(line) for line in result.stdout.splitlines()]
    letters = [entry for entry in entries if "unreadable" not in entry]
    assert summary == {
        "summary": {
            "dead_letters": 3,
            "by_reason": {"malformed-json": 2, "unknown-type": 1},
            "duplicates": 0,
            "unreadable": 1,
        }
    }
    assert len(letters) == 3
    for letter in letters:
        original = refused.originals[(letter["partition"], letter["offset"])]
        assert letter["topic"] == refused.settings.topic_requests
        assert (letter["key"], letter["key_encoding"]) == ("acme/web", "utf-8")
        assert all(letter[name] for name in ("id", "time", "detail"))
        if letter["value_encoding"] == "base64":
            assert base64.b64decode(letter["value"]) == original.value == NOT_UTF8
        else:
            assert letter["value"].encode() == original.value
    assert [entry["unreadable"]["offset"] for entry in entries if "unreadable" in entry] == [4]


async def test_resubmits_a_purge_once_its_repository_is_marked(refused: Refused) -> None:
    """Once the registry marks acme/web for deletion, `--reason repository-not-marked
    --resubmit` puts the refused purge back as a new record (same key, value and content
    type), and the next `collector run` purges the repository. Without a filter the
    malformed records are named as not resubmitted, and the exit is 1."""
    conn = await asyncpg.connect(refused.url)
    try:
        await conn.execute(
            "UPDATE repository SET state = 'marked_for_deletion' WHERE id = $1",
            refused.repository_id,
        )
        resubmitted = refused.collector(
            "dead-letters", "--reason", "repository-not-marked", "--resubmit", "--log-level", "info"
        )

        assert resubmitted.returncode == 0, resubmitted.stderr
        [logged] = [
            event
            for event in map(json.loads, _json_lines(resubmitted.stderr))
            if event["event"] == "dead_letter_resubmitted"
        ]
        partition, offset = map(int, refused.at(refused.purge).split("/"))
        assert (logged["partition"], logged["offset"]) == (partition, offset)
        assert logged["dead_letter_id"]
        assert resubmitted.stderr.splitlines()[-1].endswith("; 1 resubmitted, 0 skipped")
        records = await read_topic(refused.settings.topic_requests)
        [new] = [r for r in records if (r.partition, r.offset) not in refused.originals]
        assert (new.key, new.value) == (KEY, refused.purge)
        assert new.headers == HEADERS

        everything = refused.collector("dead-letters", "--resubmit")

        assert everything.returncode == 1
        skipped = [line for line in everything.stderr.splitlines() if "not resubmitted" in line]
        assert sorted(line.split()[2] for line in skipped) == sorted(
            refused.at(value) for value in (NOT_JSON, NOT_UTF8, refused.unknown)
        )
        assert all(": malformed-json: " in line or ": unknown-type: " in line for line in skipped)
        assert everything.stderr.splitlines()[-1].endswith("; 1 resubmitted, 3 skipped")

        ran = refused.collector("run", "--exit-when-idle", "1")

        assert ran.returncode == 0, ran.stderr
        assert (
            await conn.fetchval(
                "SELECT count(*) FROM repository WHERE id = $1", refused.repository_id
            )
            == 0
        )
        assert await conn.fetchval("SELECT count(*) FROM manifest") == 0
    finally:
        await conn.close()
    # Resubmitted twice, purged once: nothing was refused again.
    listed = refused.collector("dead-letters", "--json")
    summary = json.loads(listed.stdout.splitlines()[-1])["summary"]
    assert summary["by_reason"] == {
        "malformed-json": 2,
        "repository-not-marked": 1,
        "unknown-type": 1,
    }


def test_a_bad_since_exits_2_with_one_line() -> None:
    """A --since that is not an RFC 3339 time or a date is a usage error naming it."""
    result = run_collector("dead-letters", "--since", "last tuesday", timeout=60)

    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "collector: error: invalid --since 'last tuesday': expected an RFC 3339 time"
        " (2025-01-31T12:00:00Z) or a date (2025-01-31)"
    ]


def test_an_unreachable_broker_exits_1_with_one_line() -> None:
    """No broker at the bootstrap address: one error line, exit 1, as `audit` does."""
    result = run_collector(
        "dead-letters",
        "--kafka-bootstrap",
        "127.0.0.1:1",
        env={"COLLECTOR_CONNECT_WAIT_S": "0"},
        timeout=60,
    )

    assert result.returncode == 1
    assert "cannot reach the Kafka broker" in single_error_line(result.stderr)
