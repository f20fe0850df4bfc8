"""Admission: decide, against the database, which decoded requests become durable work.

Requests are hints and the database is the authority (CONTRACT §2.1). At the
door the collector refuses what can never be right: a repository it does not
know (or that the event names wrongly), and a purge of a repository that is
not marked for deletion. Whether a tag is still expired is decided later, by
the worker, when the work is due.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from collector.db.connector import Connection
from collector.work import queue
from collector.work.queue import RepositoryState, WorkItem
from events import AdmissionReason, Request


@dataclass(frozen=True, slots=True)
class Refusal:
    """A request the database contradicts; it goes to the dead-letter topic."""

    reason: AdmissionReason
    detail: str


Verdict = Literal["accepted", "duplicate"] | Refusal


async def admit(
    conn: Connection, arrivals: Sequence[tuple[Any, Request]], now_ms: int
) -> list[Verdict]:
    """Admit ``arrivals`` (each an aiokafka record and its request, in order) in the
    caller's transaction; one verdict each.

    An event seen before, here or in an earlier batch, is a duplicate: a
    redelivery or a replay, and it changes nothing.
    """
    items = [
        WorkItem.of(request, topic=record.topic, partition=record.partition, offset=record.offset)
        for record, request in arrivals
    ]
    seen = await queue.known(conn, items)
    known_repositories = await queue.repositories(conn, {item.repository_id for item in items})
    verdicts: list[Verdict] = []
    accepted: list[WorkItem] = []
    for item in items:
        identity = (item.source, item.event_id)
        if identity in seen:
            verdicts.append("duplicate")
        elif refusal := _refusal(item, known_repositories.get(item.repository_id)):
            verdicts.append(refusal)
        else:
            seen.add(identity)
            accepted.append(item)
            verdicts.append("accepted")
    await queue.admit(conn, accepted, now_ms)
    return verdicts


def _refusal(item: WorkItem, repository: RepositoryState | None) -> Refusal | None:
    if repository is None:
        return Refusal(
            "unknown-repository",
            f"no repository with id {item.repository_id} ({item.repository_path})",
        )
    if repository.path != item.repository_path:
        return Refusal(
            "unknown-repository",
            f"repository {item.repository_id} is {repository.path}, not {item.repository_path}",
        )
    if item.event_type == "repo-deleted" and not repository.marked:
        return Refusal(
            "repository-not-marked",
            f"repository {repository.path} is {repository.state}, not marked_for_deletion;"
            " refusing to purge it",
        )
    return None
