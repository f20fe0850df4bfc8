"""Seeded hostile records: each kind a way a producer can get a request wrong (or forge
one), with the dead-letter reason the intake must give it."""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from events import RepoDeleted, TagExpired, request_event, to_record
from tests.pipeline import Record

#: Values larger than this are refused as oversized; the hostile run sets it.
MAX_REQUEST_BYTES = 65_536


@dataclass(frozen=True)
class Live:
    """A repository of the workload nobody asked to delete, and one of its live tags."""

    namespace: str
    repository: str
    repository_id: int
    tag: str
    tag_id: int


@dataclass
class Hostile:
    records: list[Record] = field(default_factory=list)
    #: The dead letters they must earn, by reason.
    refused: Counter[str] = field(default_factory=Counter)
    #: Requests that decode and name real rows, but lie: each must end `stale`.
    forged: set[str] = field(default_factory=set)
    duplicates: int = 0


def _envelope(record: Record) -> dict[str, Any]:
    assert record.value is not None
    decoded: dict[str, Any] = json.loads(record.value)
    return decoded


def _record(key: bytes | None, event: dict[str, Any] | bytes, record: Record) -> Record:
    value = event if isinstance(event, bytes) else json.dumps(event).encode()
    return Record(key, value, record.headers)


def hostile(valid: list[Record], live: list[Live], count: int, seed: int) -> Hostile:
    """``count`` hostile records made from the valid ones and the live rows."""
    rng = random.Random(seed)
    made = Hostile()

    def refuse(reason: str, record: Record) -> None:
        made.records.append(record)
        made.refused[reason] += 1

    def malformed(base: Record) -> None:
        assert base.value is not None
        cut = base.value[: rng.randrange(1, len(base.value))]
        refuse("malformed-json", _record(base.key, rng.choice([cut, b"\xff\xfe{", b""]), base))

    def no_key(base: Record) -> None:
        refuse("invalid-key", Record(rng.choice([None, b"\xff\xfe"]), base.value, base.headers))

    def oversized(base: Record) -> None:
        event = _envelope(base) | {"padding": "x" * (MAX_REQUEST_BYTES + rng.randrange(1000))}
        refuse("oversized-value", _record(base.key, event, base))

    def envelope(base: Record) -> None:
        event = _envelope(base)
        broken = rng.choice(
            [
                {**event, "specversion": "0.3"},
                {k: v for k, v in event.items() if k != "id"},
                {**event, "time": "yesterday"},
                {**event, "id": "x\u0000y"},
                {**event, "source": "s" * 300},
            ]
        )
        refuse("invalid-envelope", _record(base.key, broken, base))

    def unknown_type(base: Record) -> None:
        kind = rng.choice(["registry.gc.nuke", "registry.gc.tag-expired.v2", "x" * 200])
        event = _envelope(base) | {"type": kind}
        refuse("unknown-type", _record(base.key, event, base))

    def invalid_field(base: Record) -> None:
        event = _envelope(base)
        data = event["data"]
        event["data"] = rng.choice(
            [
                {**data, "repository_id": str(data["repository_id"])},
                {**data, "repository_id": 2**64},
                {**data, "repository_id": True},
                {**data, "extra": 1},
                {k: v for k, v in data.items() if k != "repository_id"},
                {**data, "namespace": "a\u0000b"},
                {**data, "repository": "r" * 1025},
            ]
        )
        refuse("invalid-field", _record(base.key, event, base))

    def key_mismatch(base: Record) -> None:
        refuse("key-mismatch", Record(b"someone/else", base.value, base.headers))

    def unknown_repository(_: Record) -> None:
        data = RepoDeleted(
            namespace="ghost", repository="town", repository_id=rng.randrange(10**12, 2**63)
        )
        value, headers = to_record(request_event(data, source="/hostile"))
        refuse("unknown-repository", Record(b"ghost/town", value, headers))

    def live_purge(_: Record) -> None:
        row = rng.choice(live)
        data = RepoDeleted(
            namespace=row.namespace, repository=row.repository, repository_id=row.repository_id
        )
        value, headers = to_record(request_event(data, source="/hostile"))
        refuse("repository-not-marked", Record(data.repository_path.encode(), value, headers))

    def forged_expiry(_: Record) -> None:
        row = rng.choice(live)
        data = TagExpired(
            namespace=row.namespace,
            repository=row.repository,
            repository_id=row.repository_id,
            tag=row.tag,
            tag_id=row.tag_id,
            lifetime_end_ms=rng.choice([-(2**63), 0, 1, 2**63 - 1]),
        )
        event = request_event(data, source="/hostile")
        value, headers = to_record(event)
        made.records.append(Record(data.repository_path.encode(), value, headers))
        made.forged.add(event.id)

    def duplicate(base: Record) -> None:
        made.records.append(base)
        made.duplicates += 1

    kinds: list[Callable[[Record], None]] = [
        malformed, no_key, oversized, envelope, unknown_type, invalid_field,
        key_mismatch, unknown_repository, live_purge, forged_expiry, duplicate,
    ]  # fmt: skip
    for _ in range(count):
        rng.choice(kinds)(rng.choice(valid))
    return made
