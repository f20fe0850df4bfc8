"""Versioned schema migrations: ``migrations/NNNN_name.sql``, applied once each, in order."""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib.resources import files
from typing import TYPE_CHECKING

import structlog

from collector.errors import ConfigError

if TYPE_CHECKING:  # the connector checks migrations with this module
    from collector.db.connector import Connection

log = structlog.get_logger(__name__)

_FILENAME = re.compile(r"^(\d{4})_(\w+)\.sql$")
#: Serialises concurrent `collector migrate` runs (an arbitrary, fixed key).
_LOCK_KEY = 0x6763_6D69_6772


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def available_migrations() -> list[Migration]:
    found = []
    for entry in files("collector.db").joinpath("migrations").iterdir():
        if match := _FILENAME.match(entry.name):
            found.append(Migration(int(match[1]), match[2], entry.read_text()))
    return sorted(found, key=lambda m: m.version)


async def migrate(conn: Connection) -> list[Migration]:
    """Apply the migrations this database lacks; return those applied. Idempotent."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_KEY)
        await conn.execute(
            """
            CREATE SCHEMA IF NOT EXISTS gc;
            CREATE TABLE IF NOT EXISTS gc.schema_migration (
                version integer PRIMARY KEY,
                name text NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now()
            )
            """
        )
        rows = await conn.fetch("SELECT version, name FROM gc.schema_migration")
        done = {row["version"]: row["name"] for row in rows}
        applied = []
        for migration in available_migrations():
            if migration.version in done:
                if done[migration.version] != migration.name:
                    raise ConfigError(
                        f"migration {migration.version} was applied as "
                        f"{done[migration.version]!r} but this collector has "
                        f"{migration.name!r}: the database belongs to another version"
                    )
                continue
            await conn.execute(migration.sql)
            await conn.execute(
                "INSERT INTO gc.schema_migration (version, name) VALUES ($1, $2)",
                migration.version,
                migration.name,
            )
            log.info("migration_applied", version=migration.version, name=migration.name)
            applied.append(migration)
        return applied


async def pending_migrations(conn: Connection) -> list[Migration]:
    """The migrations this database still lacks (all of them on a bare database)."""
    if await conn.fetchval("SELECT to_regclass('gc.schema_migration')") is None:
        return available_migrations()
    done = {row["version"] for row in await conn.fetch("SELECT version FROM gc.schema_migration")}
    return [migration for migration in available_migrations() if migration.version not in done]


async def require_current(conn: Connection) -> None:
    """Refuse a database that lacks any of this collector's migrations: every query
    would fail on a missing table or column."""
    if missing := await pending_migrations(conn):
        raise ConfigError(
            f"the database lacks migration {missing[0].version}"
            f" ({missing[0].name}): run `collector migrate` first"
        )
