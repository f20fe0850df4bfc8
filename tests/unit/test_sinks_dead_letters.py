"""Reading the dead-letter topic back: selection, what can be resubmitted, and the lines
`collector dead-letters` prints."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from collector.errors import ConfigError
from collector.sinks.dead_letters import (
    DeadLetter,
    Query,
    Resend,
    Resubmission,
    Skipped,
    json_lines,
    read,
    resend_of,
    select,
    shorten,
    skipped_lines,
    summary_line,
    text_lines,
)
from collector.sinks.replay import Record
from events import (
    RejectionReason,
    RepoDeleted,
    RepoPurged,
    rejection_event,
    removal_event,
    request_event,
    to_record,
)

TOPIC = "registry.gc.dead-letter"
T = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
PURGE, _ = to_record(
    request_event(RepoDeleted(namespace="acme", repository="web", repository_id=7), source="/t")
)


def letter_record(
    offset: int,
    reason: RejectionReason = "repository-not-marked",
    *,
    key: bytes | None = b"acme/web",
    value: bytes | None = PURGE,
    time: datetime = T,
    event_id: str | None = None,
) -> Record:
    """The record of a dead letter at ``offset`` of the dead-letter topic, for a refused
    record at offset 100 + ``offset`` of partition 2 of the requests topic."""
    event = rejection_event(
        reason=reason,
        detail=f"refused for {reason}",
        topic="registry.gc.requests",
        partition=2,
        offset=100 + offset,
        key=key,
        value=value,
        time=time,
        event_id=event_id or f"letter-{offset}",
    )
    payload, headers = to_record(event)
    return Record(0, offset, key, payload, tuple(headers))


def letter(
    offset: int, reason: RejectionReason = "repository-not-marked", **fields: Any
) -> DeadLetter:
    return read(letter_record(offset, reason, **fields))


def test_select_keeps_the_first_copy_of_each_dead_letter_and_counts_the_others() -> None:
    """A refused record redelivered and refused again has the same dead-letter id: it is
    listed once."""
    records = [letter_record(0), letter_record(1, event_id="letter-0"), letter_record(2)]

    listing = select(TOPIC, records, Query())

    assert [entry.offset for entry in listing.letters] == [0, 2]
    assert listing.duplicates == 1


def test_select_filters_by_reason_and_time_but_lists_every_unreadable_record() -> None:
    """`--reason` and `--since` select dead letters; records that are no dead letter
    (not JSON, another event type, invalid data) are listed whatever the filters."""
    purged = removal_event(
        RepoPurged(namespace="acme", repository="web", repository_id=7), causation_id="r"
    )
    not_a_letter = json.loads(letter_record(9).value or b"")
    del not_a_letter["data"]["offset"]
    records = [
        letter_record(0, "malformed-json"),
        letter_record(1, "unknown-type"),
        letter_record(2, "malformed-json", time=datetime(2020, 1, 1, tzinfo=UTC)),
        Record(0, 3, None, b"not json", ()),
        Record(0, 4, None, to_record(purged)[0], ()),
        Record(0, 5, None, json.dumps(not_a_letter).encode(), ()),
    ]

    listing = select(TOPIC, records, Query.parse("2025-01-01", ["malformed-json"]))

    assert [(type(entry).__name__, entry.offset) for entry in listing.entries] == [
        ("DeadLetter", 0),
        ("Unreadable", 3),
        ("Unreadable", 4),
        ("Unreadable", 5),
    ]
    assert listing.by_reason() == {"malformed-json": 1}
    assert listing.unreadable == 3


def test_query_refuses_a_bad_since_as_audit_does() -> None:
    """The --since of `dead-letters` is audit's: a usage error naming what was typed."""
    with pytest.raises(ConfigError, match="invalid --since 'yesterday'"):
        Query.parse("yesterday", [])


def test_a_purge_refused_for_its_repository_is_resent_byte_for_byte() -> None:
    """A reason the database decided (the repository was not marked) is the operator's
    to fix: the original key and value go back as they were."""
    resend = resend_of(letter(0), max_value_bytes=1_048_576)

    assert isinstance(resend, Resend)
    assert (resend.key, resend.value) == (b"acme/web", PURGE)


@pytest.mark.parametrize(
    ("fields", "why"),
    [
        ({"value": b'{"specversion": "1.0",'}, "malformed-json: the value is not JSON"),
        # Kept as base64 in the letter, decoded before the check: the bytes are judged.
        ({"value": b"\x80\x81"}, "malformed-json: the value is not UTF-8 (byte 0)"),
        ({"key": None}, "invalid-key: the record has no key"),
        ({"key": b"acme/api"}, "key-mismatch: "),
        (
            {"value": None},
            "the dead letter does not keep the value; the original stays at"
            " registry.gc.requests partition 2 offset 100",
        ),
    ],
)
def test_a_record_that_would_be_refused_again_is_skipped_saying_why(
    fields: dict[str, Any], why: str
) -> None:
    """A value (or key) the request decoder refuses would be refused again for the same
    reason; a letter without the value has nothing to resend."""
    skipped = resend_of(letter(0, "malformed-json", **fields), max_value_bytes=1_048_576)

    assert isinstance(skipped, Skipped)
    assert skipped.reason.startswith(why)


def test_an_oversized_value_is_judged_by_the_configured_limit() -> None:
    """The size limit is the collector's setting, not the decoder's default."""
    skipped = resend_of(letter(0), max_value_bytes=10)

    assert isinstance(skipped, Skipped)
    assert skipped.reason.startswith("oversized-value: ")


def test_text_lines_show_time_reason_origin_key_and_detail() -> None:
    """One line per entry; keys that would not read as one token are quoted or marked."""
    records = [
        letter_record(0),
        letter_record(1, key=None),
        letter_record(2, key=b"\xff\x00"),
        letter_record(3, key=b"acme/my web"),
        Record(0, 4, None, b"[]", ()),
    ]

    lines = list(text_lines(select(TOPIC, records, Query())))

    assert lines[:4] == [
        "2026-03-01T12:00:00Z repository-not-marked registry.gc.requests/2/100 acme/web"
        " refused for repository-not-marked",
        "2026-03-01T12:00:00Z repository-not-marked registry.gc.requests/2/101 (no key)"
        " refused for repository-not-marked",
        "2026-03-01T12:00:00Z repository-not-marked registry.gc.requests/2/102 base64:/wA="
        " refused for repository-not-marked",
        '2026-03-01T12:00:00Z repository-not-marked registry.gc.requests/2/103 "acme/my web"'
        " refused for repository-not-marked",
    ]
    assert lines[4].startswith(f"unreadable {TOPIC}/0/4: not a CloudEvent: ")


def test_shorten_keeps_one_line_of_at_most_the_width() -> None:
    """Details are put on one line and cut with an ellipsis; short ones stay whole."""
    assert shorten("a  b\nc") == "a b c"
    assert shorten("x" * 200, 10) == "x" * 9 + "…"


def test_json_lines_end_with_the_summary_and_resubmission_counts_when_asked() -> None:
    """One object per dead letter (id, time, the refused record), the summary last; the
    resubmitted and skipped counts appear only when resubmitting."""
    listing = select(TOPIC, [letter_record(0), letter_record(1, "malformed-json")], Query())
    resubmission = Resubmission(
        resubmitted=[listing.letters[0]], skipped=[Skipped(listing.letters[1], "malformed-json")]
    )

    first, _, summary = map(json.loads, json_lines(listing))
    *_, resubmitted = map(json.loads, json_lines(listing, resubmission))

    assert first["id"] == "letter-0"
    assert first["time"] == "2026-03-01T12:00:00Z"
    assert (first["topic"], first["partition"], first["offset"]) == ("registry.gc.requests", 2, 100)
    assert (first["value"].encode(), first["value_encoding"]) == (PURGE, "utf-8")
    assert summary == {
        "summary": {
            "dead_letters": 2,
            "by_reason": {"malformed-json": 1, "repository-not-marked": 1},
            "duplicates": 0,
            "unreadable": 0,
        }
    }
    assert (resubmitted["summary"]["resubmitted"], resubmitted["summary"]["skipped"]) == (1, 1)
    assert list(skipped_lines(resubmission)) == [
        "dead-letters: offset 2/101 not resubmitted: malformed-json"
    ]
    assert summary_line(listing, resubmission) == (
        "dead-letters: 2 listed (malformed-json 1, repository-not-marked 1), 0 duplicate(s),"
        " 0 unreadable; 1 resubmitted, 1 skipped"
    )
    assert not resubmission.complete


def test_a_request_sent_in_binary_mode_is_skipped_naming_the_lost_headers() -> None:
    """Binary content mode puts the data alone in the value; the dead letter keeps no
    headers, so the record cannot be rebuilt: skipped, saying so."""
    data = json.dumps({"namespace": "acme", "repository": "web", "repository_id": 7}).encode()

    skipped = resend_of(letter(0, value=data), max_value_bytes=1_048_576)

    assert isinstance(skipped, Skipped)
    assert "binary content mode" in skipped.reason
    assert "ce_* headers" in skipped.reason
