"""Pre-OCI tags (CONTRACT §3.1): roots of collection like OCI tags, in seconds, each
removed together with its tag manifest (purge: all of them)."""

from __future__ import annotations

from collector.db.connector import Connection
from collector.db.queries import load_queries
from collector.engine.context import Scope, StepResult
from collector.engine.tags import lock_and_delete
from collector.outbox.store import Removed
from events import LegacyManifestRemoved, LegacyTagRemoved

_QUERIES = load_queries("legacy_tags.sql")


async def collect_batch(conn: Connection, scope: Scope, *, now_ms: int, limit: int) -> StepResult:
    """Remove one batch of due pre-OCI tags with their tag manifests, and queue the
    manifests, labels and images they held."""
    rows, more = await lock_and_delete(conn, _QUERIES, scope, now_ms=now_ms, limit=limit)
    removed: list[Removed] = []
    for row in rows:
        scope_fields = {
            "namespace": row["namespace"],
            "repository": row["repository"],
            "repository_id": row["repository_id"],
        }
        if row["tag_manifest_id"] is not None:
            manifest = LegacyManifestRemoved(
                **scope_fields,
                tag_manifest_id=row["tag_manifest_id"],
                digest=row["tag_manifest_digest"],
            )
            removed.append(Removed(manifest, row["causation_id"]))
        tag = LegacyTagRemoved(
            **scope_fields,
            tag=row["name"],
            repository_tag_id=row["id"],
            docker_image_id=row["docker_image_id"],
        )
        removed.append(Removed(tag, row["causation_id"]))
    # Progress is what was deleted, as for OCI tags: a failed re-check must not spin.
    return StepResult(progress=len(rows), removed=removed, more=more)
