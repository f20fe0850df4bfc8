"""Builds small registries row by row for tests, and reads their state back."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from collector.db.connector import Connection
from collector.demo.seed import TABLES

DAY_MS = 86_400_000
NOW_MS = 1_800_000_000_000  # a fixed "now" (2027-01-15) for FixedClock
WINDOW_S = 14 * 86_400  # the default time-machine window
MANIFEST = "application/vnd.oci.image.manifest.v1+json"
INDEX = "application/vnd.oci.image.index.v1+json"

#: Every registry table, in foreign-key order.
REGISTRY_TABLES = tuple(table for table, _ in TABLES)


@dataclass
class FixedClock:
    ms: int = NOW_MS

    def now_ms(self) -> int:
        return self.ms


def at(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


class Registry:
    """Insert helpers; every method returns the new row's id."""

    def __init__(self, conn: Connection, now_ms: int = NOW_MS) -> None:
        self.conn = conn
        self.now_ms = now_ms
        self._seq = itertools.count(1)
        self.used_digests: set[str] = set()

    def digest(self) -> str:
        return f"sha256:{next(self._seq):064x}"

    async def _insert(self, table: str, **values: Any) -> int:
        columns = ", ".join(values)
        params = ", ".join(f"${i}" for i in range(1, len(values) + 1))
        row_id: int = await self.conn.fetchval(
            f"INSERT INTO {table} ({columns}) VALUES ({params}) RETURNING id", *values.values()
        )
        return row_id

    async def namespace(self, name: str = "acme", window_s: int = WINDOW_S) -> int:
        return await self._insert("namespace", name=name, removed_tag_expiration_s=window_s)

    async def repository(
        self, namespace_id: int, name: str, *, kind: str = "image", state: str = "normal"
    ) -> int:
        return await self._insert(
            "repository", namespace_id=namespace_id, name=name, kind=kind, state=state
        )

    async def blob(
        self, *, size: int = 1000, digest: str | None = None, locations: tuple[str, ...] = ("s3",)
    ) -> int:
        blob_id = await self._insert("blob", digest=digest or self.digest(), size=size)
        for location in locations:
            await self._insert("blob_placement", blob_id=blob_id, location=location)
        return blob_id

    async def manifest(
        self,
        repository_id: int,
        *,
        blobs: tuple[int, ...] = (),
        children: tuple[int, ...] = (),
        labels: tuple[int, ...] = (),
        subject: str | None = None,
        digest: str | None = None,
    ) -> int:
        manifest_id = await self._insert(
            "manifest",
            repository_id=repository_id,
            digest=digest or self.digest(),
            media_type=INDEX if children else MANIFEST,
            subject_digest=subject,
        )
        for blob_id in blobs:
            await self._insert(
                "manifest_blob",
                repository_id=repository_id,
                manifest_id=manifest_id,
                blob_id=blob_id,
            )
        for child_id in children:
            await self._insert(
                "manifest_child",
                repository_id=repository_id,
                manifest_id=manifest_id,
                child_manifest_id=child_id,
            )
        for label_id in labels:
            await self._insert(
                "manifest_label",
                repository_id=repository_id,
                manifest_id=manifest_id,
                label_id=label_id,
            )
        return manifest_id

    async def manifest_digest(self, manifest_id: int) -> str:
        digest: str = await self.conn.fetchval(
            "SELECT digest FROM manifest WHERE id = $1", manifest_id
        )
        return digest

    async def label(self, key: str = "maintainer", value: str = "ops") -> int:
        return await self._insert("label", key=key, value=value)

    async def tag(
        self,
        repository_id: int,
        manifest_id: int,
        name: str = "latest",
        *,
        end_ms: int | None = None,
        immutable: bool = False,
        hidden: bool = False,
        linked_tag_id: int | None = None,
    ) -> int:
        return await self._insert(
            "tag",
            repository_id=repository_id,
            manifest_id=manifest_id,
            name=name,
            lifetime_start_ms=(end_ms or self.now_ms) - 30 * DAY_MS,
            lifetime_end_ms=end_ms,
            immutable=immutable,
            hidden=hidden,
            linked_tag_id=linked_tag_id,
        )

    async def expired_tag(
        self, repository_id: int, manifest_id: int, name: str = "old", **kwargs: Any
    ) -> int:
        """A tag that ended a day before the default window elapsed: due now."""
        end_ms = self.now_ms - WINDOW_S * 1000 - DAY_MS
        return await self.tag(repository_id, manifest_id, name, end_ms=end_ms, **kwargs)

    async def image(self, repository_id: int, storage_id: int, parent_id: int | None = None) -> int:
        return await self._insert(
            "image",
            repository_id=repository_id,
            docker_image_id=self.digest().removeprefix("sha256:"),
            storage_id=storage_id,
            parent_id=parent_id,
        )

    async def derived(self, image_id: int, blob_id: int, transformation: str = "squash") -> int:
        return await self._insert(
            "derived_image_storage",
            source_image_id=image_id,
            derivative_id=blob_id,
            transformation=transformation,
        )

    async def legacy(self, repository_id: int, manifest_id: int, image_id: int) -> int:
        return await self._insert(
            "manifest_legacy_image",
            repository_id=repository_id,
            manifest_id=manifest_id,
            image_id=image_id,
        )

    async def upload(self, repository_id: int, blob_id: int, expires_ms: int) -> int:
        return await self._insert(
            "uploaded_blob", repository_id=repository_id, blob_id=blob_id, expires_at=at(expires_ms)
        )

    # The pre-OCI model (CONTRACT §3.1): lifetimes in seconds.

    async def repository_tag(
        self,
        repository_id: int,
        image_id: int,
        name: str = "latest",
        *,
        end_ts: int | None = None,
        hidden: bool = False,
    ) -> int:
        return await self._insert(
            "repository_tag",
            repository_id=repository_id,
            image_id=image_id,
            name=name,
            lifetime_start_ts=(end_ts or self.now_ms // 1000) - 30 * DAY_MS // 1000,
            lifetime_end_ts=end_ts,
            hidden=hidden,
        )

    async def expired_repository_tag(
        self, repository_id: int, image_id: int, name: str = "old", **kwargs: Any
    ) -> int:
        """A pre-OCI tag that ended a day before the default window elapsed: due now."""
        end_ts = (self.now_ms - WINDOW_S * 1000 - DAY_MS) // 1000
        return await self.repository_tag(repository_id, image_id, name, end_ts=end_ts, **kwargs)

    async def tag_manifest(
        self,
        repository_tag_id: int,
        *,
        manifest_id: int | None = None,
        labels: tuple[int, ...] = (),
        repository_id: int | None = None,
    ) -> int:
        """The tag manifest of a pre-OCI tag, mapped to an OCI manifest if given, with
        label rows (in ``repository_id``) and their label-map rows."""
        tag_manifest_id = await self._insert(
            "tag_manifest", tag_id=repository_tag_id, digest=self.digest()
        )
        if manifest_id is not None:
            await self._insert(
                "tag_manifest_to_manifest", tag_manifest_id=tag_manifest_id, manifest_id=manifest_id
            )
        for label_id in labels:
            assert repository_id is not None
            row = await self._insert(
                "tag_manifest_label",
                repository_id=repository_id,
                annotated_id=tag_manifest_id,
                label_id=label_id,
            )
            await self._insert(
                "tag_manifest_label_map",
                tag_manifest_id=tag_manifest_id,
                manifest_id=manifest_id,
                label_id=label_id,
                tag_manifest_label_id=row,
            )
        return tag_manifest_id

    async def tag_link(self, repository_id: int, tag_id: int, repository_tag_id: int) -> int:
        """A tag_to_repository_tag mapping row."""
        return await self._insert(
            "tag_to_repository_tag",
            repository_id=repository_id,
            tag_id=tag_id,
            repository_tag_id=repository_tag_id,
        )

    async def app_tag(self, repository_id: int, name: str, linked_tag_id: int | None = None) -> int:
        return await self._insert(
            "app_tag", repository_id=repository_id, name=name, linked_tag_id=linked_tag_id
        )


async def snapshot(conn: Connection) -> dict[str, set[int]]:
    """The ids in every registry table."""
    return {
        table: {row["id"] for row in await conn.fetch(f"SELECT id FROM {table}")}
        for table in REGISTRY_TABLES
    }


async def exists(conn: Connection, table: str, row_id: int) -> bool:
    found: bool = await conn.fetchval(
        f"SELECT EXISTS (SELECT 1 FROM {table} WHERE id = $1)", row_id
    )
    return found


async def outbox(conn: Connection) -> list[dict[str, Any]]:
    """The outbox's events, oldest first, decoded."""
    import json

    rows = await conn.fetch("SELECT key, event FROM gc.outbox ORDER BY id")
    return [{"key": row["key"], **json.loads(row["event"])} for row in rows]
