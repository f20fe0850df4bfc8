"""The baseline users run today: the ancestor's algorithm (Quay's
``data/model/gc.py`` of 2020), re-implemented on our schema for the benchmark only.

What makes it the ancestor's: a repository at a time; its due tags in chunks of
10, each deleted in a transaction of its own after re-reading it; then a
context of candidate ids (manifests, legacy images, labels, blobs) decided
one object at a time, each with individual SELECTs for every kind of
reference and its own delete transaction, looped until a pass changes
nothing. What makes it ours: the rules it checks are the collector's own rule
functions (``gc.unreferenced_manifests()`` and the others, asked about one id
at a time), so that it deletes exactly the same garbage.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from collector.db.connector import Connection
from collector.db.queries import load_queries

_CHUNK = 10
#: The repository goes once empty: the engine's own statement.
_DELETE_IF_EMPTY = load_queries("repositories.sql")["delete_if_empty"]


@dataclass
class _Context:
    """The ancestor's _GarbageCollectorContext: ids still to decide."""

    repository_id: int
    manifests: set[int] = field(default_factory=set)
    images: set[int] = field(default_factory=set)
    labels: set[int] = field(default_factory=set)
    blobs: set[int] = field(default_factory=set)


class SeedStyle:
    def __init__(
        self, conn: Connection, *, now_ms: int, at_time: datetime, protected: list[str]
    ) -> None:
        self._conn = conn
        self._now_ms = now_ms
        self._at_time = at_time
        self._protected = protected
        #: Objects deleted, as the ancestor's callbacks would have reported them.
        self.removed = 0

    async def collect_all(self) -> None:
        """Every repository with due work is collected; every marked one purged."""
        marked = [
            row["id"]
            for row in await self._conn.fetch(
                "SELECT id FROM repository WHERE gc.repository_is_marked(state) ORDER BY id"
            )
        ]
        due = await self._conn.fetch(
            "SELECT id FROM gc.repositories_with_due_work($1, $2) ORDER BY id",
            self._now_ms,
            self._at_time,
        )
        for row in due:
            if row["id"] not in marked:
                await self._garbage_collect_repository(row["id"])
        for repository_id in marked:
            await self._purge_repository(repository_id)

    # -- a repository -----------------------------------------------------------------

    async def _garbage_collect_repository(self, repository_id: int) -> None:
        due_tags = (
            "SELECT t.id, t.manifest_id, t.lifetime_end_ms FROM tag t"
            " WHERE t.repository_id = $1 AND t.id IN (SELECT id FROM gc.due_tags($2))"
            f" LIMIT {_CHUNK}"
        )
        while tags := await self._conn.fetch(due_tags, repository_id, self._now_ms):
            context = _Context(repository_id)
            for tag in tags:
                await self._purge_tag(
                    tag["id"], tag["manifest_id"], tag["lifetime_end_ms"], context
                )
            await self._run_garbage_collection(context)
        due_legacy_tags = (
            "SELECT t.id, t.image_id, t.lifetime_end_ts FROM repository_tag t"
            " WHERE t.repository_id = $1"
            " AND t.id IN (SELECT id FROM gc.due_legacy_tags($2))"
            f" LIMIT {_CHUNK}"
        )
        while tags := await self._conn.fetch(due_legacy_tags, repository_id, self._now_ms):
            context = _Context(repository_id)
            for tag in tags:
                await self._purge_legacy_tag(tag["id"], tag["image_id"], context)
            await self._run_garbage_collection(context)
        expired_uploads = (
            "SELECT id, blob_id FROM uploaded_blob"
            " WHERE repository_id = $1 AND gc.upload_is_expired(expires_at, $2)"
            f" LIMIT {_CHUNK}"
        )
        while uploads := await self._conn.fetch(expired_uploads, repository_id, self._at_time):
            await self._remove_uploads(uploads, repository_id)

    async def _purge_repository(self, repository_id: int) -> None:
        """Everything in the repository, whatever its state, then the repository."""
        await self._conn.execute("DELETE FROM app_tag WHERE repository_id = $1", repository_id)
        tags = f"SELECT id, manifest_id FROM tag WHERE repository_id = $1 LIMIT {_CHUNK}"
        while rows := await self._conn.fetch(tags, repository_id):
            context = _Context(repository_id)
            for tag in rows:
                await self._purge_tag(tag["id"], tag["manifest_id"], None, context)
            await self._run_garbage_collection(context)
        legacy = f"SELECT id, image_id FROM repository_tag WHERE repository_id = $1 LIMIT {_CHUNK}"
        while rows := await self._conn.fetch(legacy, repository_id):
            context = _Context(repository_id)
            for tag in rows:
                await self._purge_legacy_tag(tag["id"], tag["image_id"], context)
            await self._run_garbage_collection(context)
        uploads = f"SELECT id, blob_id FROM uploaded_blob WHERE repository_id = $1 LIMIT {_CHUNK}"
        while rows := await self._conn.fetch(uploads, repository_id):
            await self._remove_uploads(rows, repository_id)
        # What no tag reached (untagged manifests, images no tag names), as the engine does.
        manifests = await self._conn.fetch(
            "SELECT id FROM manifest WHERE repository_id = $1", repository_id
        )
        images = await self._conn.fetch(
            "SELECT id FROM image WHERE repository_id = $1", repository_id
        )
        if manifests or images:
            context = _Context(
                repository_id,
                manifests={row["id"] for row in manifests},
                images={row["id"] for row in images},
            )
            await self._run_garbage_collection(context)
        async with self._conn.transaction():
            await self._conn.execute(_DELETE_IF_EMPTY, repository_id)

    async def _remove_uploads(self, uploads: list[Any], repository_id: int) -> None:
        context = _Context(repository_id)
        for upload in uploads:
            async with self._conn.transaction():
                await self._conn.execute("DELETE FROM uploaded_blob WHERE id = $1", upload["id"])
            context.blobs.add(upload["blob_id"])
        await self._run_garbage_collection(context)

    # -- roots ------------------------------------------------------------------------

    async def _purge_tag(
        self, tag_id: int, manifest_id: int, lifetime_end_ms: int | None, context: _Context
    ) -> None:
        context.manifests.add(manifest_id)
        async with self._conn.transaction():
            reloaded = await self._conn.fetchrow(
                "SELECT lifetime_end_ms FROM tag WHERE id = $1 FOR UPDATE", tag_id
            )
            if reloaded is None:
                return
            if lifetime_end_ms is not None and reloaded["lifetime_end_ms"] != lifetime_end_ms:
                return
            await self._conn.execute("DELETE FROM tag_to_repository_tag WHERE tag_id = $1", tag_id)
            await self._conn.execute("DELETE FROM tag WHERE id = $1", tag_id)
        self.removed += 1

    async def _purge_legacy_tag(self, tag_id: int, image_id: int, context: _Context) -> None:
        tag_manifest = await self._conn.fetchval(
            "SELECT id FROM tag_manifest WHERE tag_id = $1", tag_id
        )
        if tag_manifest is not None:
            await self._collect_tag_manifest(tag_manifest, context)
        context.images.add(image_id)
        async with self._conn.transaction():
            if (
                await self._conn.fetchval(
                    "SELECT id FROM repository_tag WHERE id = $1 FOR UPDATE", tag_id
                )
                is None
            ):
                return
            await self._conn.execute(
                "DELETE FROM tag_to_repository_tag WHERE repository_tag_id = $1", tag_id
            )
            await self._conn.execute("DELETE FROM repository_tag WHERE id = $1", tag_id)
        self.removed += 1

    async def _collect_tag_manifest(self, tag_manifest_id: int, context: _Context) -> None:
        for row in await self._conn.fetch(
            "SELECT label_id FROM tag_manifest_label WHERE annotated_id = $1", tag_manifest_id
        ):
            context.labels.add(row["label_id"])
        async with self._conn.transaction():
            await self._conn.execute(
                "DELETE FROM tag_manifest_label_map WHERE tag_manifest_id = $1"
                " OR tag_manifest_label_id IN"
                " (SELECT id FROM tag_manifest_label WHERE annotated_id = $1)",
                tag_manifest_id,
            )
            await self._conn.execute(
                "DELETE FROM tag_manifest_label WHERE annotated_id = $1", tag_manifest_id
            )
            mapped = await self._conn.fetchval(
                "DELETE FROM tag_manifest_to_manifest WHERE tag_manifest_id = $1"
                " RETURNING manifest_id",
                tag_manifest_id,
            )
            if mapped is not None:
                context.manifests.add(mapped)
            await self._conn.execute("DELETE FROM tag_manifest WHERE id = $1", tag_manifest_id)
        self.removed += 1

    # -- the fixpoint -----------------------------------------------------------------

    async def _run_garbage_collection(self, context: _Context) -> None:
        changed = True
        while changed:
            changed = False
            for manifest_id in list(context.manifests):
                changed |= await self._collect_manifest(manifest_id, context)
            for image_id in list(context.images):
                changed |= await self._collect_image(image_id, context)
            for label_id in list(context.labels):
                changed |= await self._collect_label(label_id, context)
            for blob_id in list(context.blobs):
                changed |= await self._collect_blob(blob_id, context)

    async def _manifest_used(self, manifest_id: int) -> bool:
        return not await self._conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM gc.unreferenced_manifests() u WHERE u.id = $1)",
            manifest_id,
        )

    async def _collect_manifest(self, manifest_id: int, context: _Context) -> bool:
        if await self._manifest_used(manifest_id):
            return False
        conn = self._conn
        for row in await conn.fetch(
            "SELECT blob_id FROM manifest_blob WHERE manifest_id = $1", manifest_id
        ):
            context.blobs.add(row["blob_id"])
        for row in await conn.fetch(
            "SELECT image_id FROM manifest_legacy_image WHERE manifest_id = $1", manifest_id
        ):
            context.images.add(row["image_id"])
        for row in await conn.fetch(
            "SELECT child_manifest_id FROM manifest_child WHERE manifest_id = $1", manifest_id
        ):
            context.manifests.add(row["child_manifest_id"])
        for row in await conn.fetch(
            "SELECT label_id FROM manifest_label WHERE manifest_id = $1", manifest_id
        ):
            context.labels.add(row["label_id"])
        for row in await conn.fetch(
            "SELECT r.id FROM manifest s JOIN manifest r"
            " ON r.repository_id = s.repository_id AND r.subject_digest = s.digest"
            " WHERE s.id = $1",
            manifest_id,
        ):
            context.manifests.add(row["id"])
        async with conn.transaction():
            if await conn.fetchval("SELECT id FROM manifest WHERE id = $1", manifest_id) is None:
                context.manifests.discard(manifest_id)
                return False
            if await self._manifest_used(manifest_id):
                return False
            await conn.execute(
                "DELETE FROM tag_manifest_label_map WHERE manifest_id = $1 OR manifest_label_id"
                " IN (SELECT id FROM manifest_label WHERE manifest_id = $1)",
                manifest_id,
            )
            for link in (
                "manifest_label",
                "manifest_child",
                "manifest_blob",
                "manifest_legacy_image",
            ):
                await conn.execute(f"DELETE FROM {link} WHERE manifest_id = $1", manifest_id)
            await conn.execute("DELETE FROM manifest WHERE id = $1", manifest_id)
        context.manifests.discard(manifest_id)
        self.removed += 1
        return True

    async def _image_used(self, image_id: int) -> bool:
        return not await self._conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM gc.unreferenced_images() u WHERE u.id = $1)",
            image_id,
        )

    async def _collect_image(self, image_id: int, context: _Context) -> bool:
        if await self._image_used(image_id):
            return False
        conn = self._conn
        for row in await conn.fetch(
            "SELECT derivative_id FROM derived_image_storage WHERE source_image_id = $1", image_id
        ):
            context.blobs.add(row["derivative_id"])
        image = await conn.fetchrow(
            "SELECT storage_id, parent_id FROM image WHERE id = $1", image_id
        )
        if image is None:
            context.images.discard(image_id)
            return False
        context.blobs.add(image["storage_id"])
        if image["parent_id"] is not None:
            context.images.add(image["parent_id"])
        async with conn.transaction():
            if await self._image_used(image_id):
                return False
            await conn.execute(
                "DELETE FROM derived_image_storage WHERE source_image_id = $1", image_id
            )
            await conn.execute("DELETE FROM image WHERE id = $1", image_id)
        context.images.discard(image_id)
        self.removed += 1
        return True

    async def _collect_label(self, label_id: int, context: _Context) -> bool:
        conn = self._conn
        async with conn.transaction():
            if not await conn.fetchval(
                "SELECT EXISTS (SELECT 1 FROM gc.unreferenced_labels() u WHERE u.id = $1)",
                label_id,
            ):
                return False
            await conn.execute("DELETE FROM tag_manifest_label_map WHERE label_id = $1", label_id)
            await conn.execute("DELETE FROM label WHERE id = $1", label_id)
        context.labels.discard(label_id)
        self.removed += 1
        return True

    async def _collect_blob(self, blob_id: int, context: _Context) -> bool:
        """Placeholders (no placement), protected digests and blobs something holds
        are kept: gc.unreferenced_blobs decides, as for the engine."""
        conn = self._conn
        async with conn.transaction():
            if not await conn.fetchval(
                "SELECT EXISTS (SELECT 1 FROM gc.unreferenced_blobs($2, $3) u WHERE u.id = $1)",
                blob_id,
                self._at_time,
                self._protected,
            ):
                return False
            await conn.execute("DELETE FROM uploaded_blob WHERE blob_id = $1", blob_id)
            await conn.execute("DELETE FROM blob_placement WHERE blob_id = $1", blob_id)
            await conn.execute("DELETE FROM blob WHERE id = $1", blob_id)
        context.blobs.discard(blob_id)
        self.removed += 1
        return True
