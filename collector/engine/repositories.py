"""Repository rows: lookup, the purge guard, and the repository's own removal."""

from __future__ import annotations

from dataclasses import dataclass

from collector.clock import ms_to_datetime
from collector.db.connector import Connection
from collector.db.queries import load_queries
from collector.errors import ConfigError, RepositoryNotFound
from events import RepoPurged

_QUERIES = load_queries("repositories.sql")


@dataclass(frozen=True)
class Repository:
    id: int
    namespace: str
    name: str
    kind: str
    state: str
    marked_for_deletion: bool  # due for purge (gc.repository_is_marked)

    @property
    def path(self) -> str:
        return f"{self.namespace}/{self.name}"


def split_path(path: str) -> tuple[str, str]:
    """``"namespace/repository"`` into its two parts; a usage error otherwise."""
    namespace, sep, name = path.partition("/")
    if not (sep and namespace and name) or "" in name.split("/"):
        raise ConfigError(f"expected NAMESPACE/REPOSITORY, got {path!r}")
    return namespace, name


async def find(conn: Connection, path: str) -> Repository:
    namespace, name = split_path(path)
    row = await conn.fetchrow(_QUERIES["find"], namespace, name)
    if row is None:
        raise RepositoryNotFound(f"no repository {path}")
    return Repository(**dict(row))


def require_marked(repositories: list[Repository]) -> None:
    """Refuse, before anything is done, to purge repositories that are not marked."""
    if live := [r.path for r in repositories if not r.marked_for_deletion]:
        raise ConfigError(f"not marked for deletion, refusing to purge: {', '.join(live)}")


async def require_namespace(conn: Connection, name: str) -> None:
    """Raise :class:`RepositoryNotFound` when there is no namespace ``name``."""
    if not await conn.fetchval(_QUERIES["namespace_exists"], name):
        raise RepositoryNotFound(f"no namespace {name}")


async def is_marked(conn: Connection, repository_id: int) -> bool | None:
    """Whether the repository is marked for deletion (None: it does not exist).

    Holds the row FOR SHARE until the transaction ends, so it cannot be
    unmarked meanwhile.
    """
    marked: bool | None = await conn.fetchval(_QUERIES["lock_marked"], repository_id)
    return marked


async def delete_app_tags(conn: Connection, repository_id: int, limit: int) -> int:
    count: int = await conn.fetchval(_QUERIES["delete_app_tags"], repository_id, limit)
    return count


async def delete_if_empty(conn: Connection, repository_id: int) -> RepoPurged | None:
    row = await conn.fetchrow(_QUERIES["delete_if_empty"], repository_id)
    if row is None:
        return None
    return RepoPurged(namespace=row["namespace"], repository=row["name"], repository_id=row["id"])


async def with_due_work(conn: Connection, now_ms: int) -> list[int]:
    """Repositories with a tag past its window, an expired upload, or pending candidates."""
    rows = await conn.fetch(_QUERIES["with_due_work"], now_ms, ms_to_datetime(now_ms))
    return [row["id"] for row in rows]


async def marked(conn: Connection) -> list[int]:
    return [row["id"] for row in await conn.fetch(_QUERIES["marked"])]
