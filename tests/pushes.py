"""What a registry's push writes, and a writer that races the collector with such pushes.
Each push runs in the caller's transaction; a link to a row the collector removed first
fails its foreign-key check, as the registry's would."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import asyncpg

from collector.db.connector import Connection


async def retag(conn: Connection, repository_id: int, manifest_id: int) -> None:
    """A new alive tag on an existing manifest."""
    await conn.execute(
        "INSERT INTO tag (repository_id, manifest_id, name, lifetime_start_ms)"
        " VALUES ($1, $2, md5(random()::text), 0)",
        repository_id,
        manifest_id,
    )


async def push(conn: Connection, repository_id: int, blob_id: int) -> int:
    """A new tagged manifest whose layer is an existing blob; returns the manifest."""
    manifest_id: int = await conn.fetchval(
        "INSERT INTO manifest (repository_id, digest, media_type)"
        " VALUES ($1, md5(random()::text), 'm') RETURNING id",
        repository_id,
    )
    await conn.execute(
        "INSERT INTO manifest_blob (repository_id, manifest_id, blob_id) VALUES ($1, $2, $3)",
        repository_id,
        manifest_id,
        blob_id,
    )
    await retag(conn, repository_id, manifest_id)
    return manifest_id


async def fresh_blob(conn: Connection) -> int:
    """A new blob with a placement, linked from nothing yet (an upload in progress)."""
    blob_id: int = await conn.fetchval(
        "WITH b AS (INSERT INTO blob (digest, size) VALUES (md5(random()::text), 1) RETURNING id)"
        " INSERT INTO blob_placement (blob_id, location) SELECT id, 's3' FROM b RETURNING blob_id"
    )
    return blob_id


async def legacy_retag(
    conn: Connection, repository_id: int, image_id: int, manifest_id: int | None = None
) -> int:
    """A new alive pre-OCI tag on an existing image, with a tag manifest mapped to an
    existing manifest if given (a registry of the ancestor's generation pushing)."""
    tag_id: int = await conn.fetchval(
        "INSERT INTO repository_tag (repository_id, image_id, name, lifetime_start_ts)"
        " VALUES ($1, $2, md5(random()::text), 0) RETURNING id",
        repository_id,
        image_id,
    )
    if manifest_id is not None:
        await conn.execute(
            "WITH tm AS (INSERT INTO tag_manifest (tag_id, digest)"
            " VALUES ($1, md5(random()::text)) RETURNING id)"
            " INSERT INTO tag_manifest_to_manifest (tag_manifest_id, manifest_id)"
            " SELECT id, $2 FROM tm",
            tag_id,
            manifest_id,
        )
    return tag_id


T = TypeVar("T")


@dataclass
class Race:
    """What a writer racing the collector did."""

    commits: int = 0  # writes that committed while the collector ran
    refused: list[str] = field(default_factory=list)  # constraints that refused the others


#: One write, in the writer's transaction; returns what to record once it committed.
Write = Callable[[Connection, random.Random], Awaitable[Callable[[], None]]]


async def race(
    pool: asyncpg.Pool[asyncpg.Record], collecting: Awaitable[T], write: Write, *, seed: int
) -> tuple[T, Race]:
    """Await ``collecting`` while a writer repeats ``write``, each in a transaction of its
    own on a connection of its own, seeded; a write the collector won against fails its
    foreign-key check and is counted as refused."""
    outcome = Race()
    running = True

    async def writer(conn: Connection) -> None:
        rng = random.Random(seed)
        while running:
            try:
                async with conn.transaction():
                    record = await write(conn, rng)
            except asyncpg.ForeignKeyViolationError as exc:
                outcome.refused.append(exc.constraint_name or "")
            else:
                record()
                outcome.commits += running
            await asyncio.sleep(0)

    async with pool.acquire() as conn:
        writing = asyncio.create_task(writer(conn))
        await asyncio.sleep(0.05)  # the writer is under way when the collector starts
        try:
            result = await collecting
        finally:
            running = False
            await writing
    return result, outcome
