"""Re-pushes racing the blob deleter: while `collector sink blob-deleter` frees the bytes
of every removed blob, a registry pushes some of those digests again (under the
digest's lock, as DESIGN §3.7 asks of it). Every digest that exists again keeps its
bytes; every other removed digest's bytes are gone."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import shutil
import tempfile
from pathlib import Path

import asyncpg

from collector.db.queries import load_queries
from collector.sinks.storage import FilesystemStorage
from tests.acceptance.conftest import collector_command
from tests.faults.harness import Workload, dispose, pipeline


async def repush(
    conn: asyncpg.Connection[asyncpg.Record], storage: FilesystemStorage, digest: str
) -> None:
    """A registry finalizing an upload of ``digest``: bytes and row under its lock."""
    async with conn.transaction():
        await conn.execute(load_queries("sinks.sql")["lock_digest"], digest)  # the deleter's
        path = storage.path(digest)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(digest.encode())
        await conn.execute("INSERT INTO blob (digest, size) VALUES ($1, 1)", digest)


async def test_repushes_racing_the_blob_deleter_keep_their_bytes(
    workload: Workload, fault_logs: Path
) -> None:
    run = await pipeline(workload, "repush", fault_logs)
    root = Path(tempfile.mkdtemp(prefix="registry-gc-storage-"))
    storage = FilesystemStorage(root)
    try:
        source = await asyncpg.connect(workload.server.url(workload.source))
        try:  # the storage as it was before the collection: a file per blob
            for row in await source.fetch("SELECT digest FROM blob"):
                path = storage.path(row["digest"])
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(row["digest"].encode())
        finally:
            await source.close()
        await run.serve()
        conn = await asyncpg.connect(run.url)
        try:
            events = [
                json.loads(row["event"])
                for row in await conn.fetch("SELECT event::text AS event FROM gc.outbox")
            ]
            removed = sorted(
                e["data"]["digest"] for e in events if e["type"] == "registry.gc.blob-removed"
            )
            rng = random.Random(37)
            chosen = rng.sample(removed, len(removed) // 4)
            deleter = await asyncio.create_subprocess_exec(
                *collector_command(
                    "sink", "blob-deleter", "--storage-root", str(root), "--exit-when-idle", "2"
                ),
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
                limit=2**20,
                env={**run.env, "COLLECTOR_SINK_GROUP_ID": f"{run.settings.group_id}.sink"},
            )
            assert deleter.stderr is not None
            lines: list[str] = []
            deleting = asyncio.Event()

            async def read_log(stream: asyncio.StreamReader) -> None:
                while line := (await stream.readline()).decode():
                    lines.append(line)
                    if '"blob_deleted"' in line:
                        deleting.set()

            reading = asyncio.create_task(read_log(deleter.stderr))
            await asyncio.wait_for(deleting.wait(), 120)
            for digest in chosen:  # while the deleter works through the topic
                await repush(conn, storage, digest)
                await asyncio.sleep(rng.uniform(0, 0.005))
            await asyncio.wait_for(deleter.wait(), 300)
            await reading
            exists_again = {
                row["digest"]
                for row in await conn.fetch(
                    "SELECT digest FROM blob WHERE digest = ANY($1)", removed
                )
            }
        finally:
            await conn.close()
        kept = [d for d in removed if storage.path(d).exists()]
    finally:
        await dispose(run)
        shutil.rmtree(root)

    assert deleter.returncode == 0, "".join(lines[-20:])
    assert exists_again == set(chosen)
    assert set(kept) == exists_again, "bytes kept exactly for the digests pushed again"
    outcomes: dict[str, str] = {}
    for line in lines:
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if entry.get("event") in ("blob_deleted", "blob_repushed"):
                outcomes[entry["digest"]] = entry["event"]
    before = sum(1 for d in chosen if outcomes.get(d) == "blob_repushed")
    after = sum(1 for d in chosen if outcomes.get(d) == "blob_deleted")
    print(
        f"re-push: {len(removed)} blobs removed, {len(chosen)} pushed again while the deleter"
        f" ran: {before} before it reached them (kept), {after} after it deleted them"
        f" (bytes written again)"
    )
    assert before > 0, "some re-pushes came before the deleter reached them"
    assert after > 0, "and some after: the two really raced"
