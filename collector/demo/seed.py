"""Seeds realistic registries fast: rows planned in Python, written with COPY.

A plan refers to rows it has not written yet by :class:`Ref` (table, index);
:func:`write` reserves real ids from each table's sequence, resolves the
references and copies every table in foreign-key order. Names and digests
carry a run id, so seeding twice into one database never collides.
"""

from __future__ import annotations

import hashlib
import random
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from collector.clock import ms_to_datetime
from collector.config import EMPTY_LAYER_DIGEST
from collector.db.connector import Connection

DAY_MS = 86_400_000
MANIFEST = "application/vnd.oci.image.manifest.v1+json"
INDEX = "application/vnd.oci.image.index.v1+json"
SIGNATURE = "application/vnd.dev.cosign.artifact.sig.v1+json"

#: (table, columns) in foreign-key order.
TABLES: list[tuple[str, tuple[str, ...]]] = [
    ("namespace", ("id", "name", "removed_tag_expiration_s")),
    ("repository", ("id", "namespace_id", "name", "kind", "state")),
    ("blob", ("id", "digest", "size")),
    ("blob_placement", ("id", "blob_id", "location")),
    ("label", ("id", "key", "value", "media_type", "source_type")),
    ("manifest", ("id", "repository_id", "digest", "media_type", "subject_digest")),
    ("manifest_blob", ("id", "repository_id", "manifest_id", "blob_id")),
    ("manifest_child", ("id", "repository_id", "manifest_id", "child_manifest_id")),
    ("manifest_label", ("id", "repository_id", "manifest_id", "label_id")),
    ("tag", ("id", "repository_id", "manifest_id", "name", "lifetime_start_ms",
             "lifetime_end_ms", "hidden", "immutable")),
    ("image", ("id", "repository_id", "docker_image_id", "storage_id", "parent_id")),
    ("derived_image_storage", ("id", "source_image_id", "derivative_id", "transformation")),
    ("manifest_legacy_image", ("id", "repository_id", "manifest_id", "image_id")),
    ("repository_tag", ("id", "repository_id", "image_id", "name", "lifetime_start_ts",
                        "lifetime_end_ts", "hidden")),
    ("tag_manifest", ("id", "tag_id", "digest")),
    ("tag_manifest_to_manifest", ("id", "tag_manifest_id", "manifest_id")),
    ("tag_to_repository_tag", ("id", "repository_id", "tag_id", "repository_tag_id")),
    ("tag_manifest_label", ("id", "repository_id", "annotated_id", "label_id")),
    ("tag_manifest_label_map", ("id", "tag_manifest_id", "manifest_id", "label_id",
                                "tag_manifest_label_id", "manifest_label_id")),
    ("uploaded_blob", ("id", "repository_id", "blob_id", "expires_at")),
    ("app_tag", ("id", "repository_id", "name", "linked_tag_id", "lifetime_end_ms")),
]  # fmt: skip


class Ref(NamedTuple):
    table: str
    row: int


@dataclass(frozen=True)
class Shape:
    """How big and how tangled the seeded registry is."""

    namespaces: int = 8
    repositories: int = 200
    manifests_per_repository: int = 12
    base_layers: int = 40
    application_repositories: int = 4
    #: Pre-OCI tag history behind some legacy chains (CONTRACT §3.1).
    pre_oci: bool = True


@dataclass
class Plan:
    run: str
    rows: dict[str, list[list[Any]]] = field(default_factory=lambda: defaultdict(list))

    def add(self, table: str, *values: Any) -> Ref:
        self.rows[table].append([None, *values])  # the id comes at write time
        return Ref(table, len(self.rows[table]) - 1)

    def counts(self) -> dict[str, int]:
        return {table: len(rows) for table, rows in self.rows.items()}


def digest(*parts: object) -> str:
    return "sha256:" + hashlib.sha256("/".join(map(str, parts)).encode()).hexdigest()


def plan_registry(shape: Shape, *, now_ms: int, seed: int = 0, run: str | None = None) -> Plan:
    """A registry as a busy one looks: shared base layers, multi-arch lists,
    signatures, labels, tag history inside and past the time machine, legacy
    V1 chains with pre-OCI tag history, uploads in flight. Every manifest is
    tagged; only old tag versions past their window and abandoned uploads are
    due."""
    rng = random.Random(seed)
    plan = Plan(run=run or uuid.uuid4().hex[:8])
    blob_count = 0

    def blob(size: int) -> Ref:
        nonlocal blob_count
        blob_count += 1
        ref = plan.add("blob", digest(plan.run, "blob", blob_count), size)
        for location in rng.sample(["s3-us-east", "s3-eu-west", "gcs-asia"], rng.randint(1, 2)):
            plan.add("blob_placement", ref, location)
        return ref

    bases = [blob(rng.randint(2_000_000, 60_000_000)) for _ in range(shape.base_layers)]
    namespaces = [
        plan.add("namespace", f"demo-{plan.run}-{i}", rng.choice([0, DAY_MS // 1000, 1_209_600]))
        for i in range(shape.namespaces)
    ]
    shared_labels = [
        plan.add("label", key, value, "text/plain", "manifest")
        for key, value in [("team", "platform"), ("tier", "prod"), ("os", "linux")]
    ]
    for r in range(shape.repositories):
        repo = plan.add("repository", rng.choice(namespaces), f"app-{r}", "image", "normal")
        _plan_repository(plan, rng, repo, shape, bases, shared_labels, blob, now_ms)
    for r in range(shape.application_repositories):
        repo = plan.add("repository", rng.choice(namespaces), f"chart-{r}", "application", "normal")
        previous = None
        for version in range(rng.randint(1, 4)):
            previous = plan.add("app_tag", repo, f"1.{version}", previous, None)
    return plan


def _plan_repository(
    plan: Plan,
    rng: random.Random,
    repo: Ref,
    shape: Shape,
    bases: list[Ref],
    shared_labels: list[Ref],
    blob: Callable[[int], Ref],
    now_ms: int,
) -> None:
    manifests: list[tuple[Ref, str]] = []
    for m in range(shape.manifests_per_repository):
        manifest_digest = digest(plan.run, repo.row, "manifest", m)
        manifest = plan.add("manifest", repo, manifest_digest, MANIFEST, None)
        manifests.append((manifest, manifest_digest))
        layers = {blob(rng.randint(1_000, 20_000)), *rng.sample(bases, rng.randint(1, 3))}
        layers |= {blob(rng.randint(100_000, 30_000_000)) for _ in range(rng.randint(1, 3))}
        for layer in layers:
            plan.add("manifest_blob", repo, manifest, layer)
        labels = set(rng.sample(shared_labels, rng.randint(0, 2)))
        if rng.random() < 0.5:
            labels.add(plan.add("label", "build", str(rng.randint(1, 9999)), "text/plain", "api"))
        for label in labels:
            plan.add("manifest_label", repo, manifest, label)
        if rng.random() < 0.3:  # a cosign signature: an OCI referrer of this manifest
            signature = plan.add(
                "manifest", repo, digest(plan.run, repo.row, "sig", m), SIGNATURE, manifest_digest
            )
            plan.add("manifest_blob", repo, signature, blob(rng.randint(200, 2_000)))
    # Multi-arch: a few lists over the single-arch manifests.
    lists = []
    for n in range(rng.randint(0, 2)):
        children = rng.sample(manifests, min(len(manifests), rng.randint(2, 4)))
        index_digest = digest(plan.run, repo.row, "index", n)
        index = plan.add("manifest", repo, index_digest, INDEX, None)
        for child, _ in children:
            plan.add("manifest_child", repo, index, child)
        lists.append((index, index_digest))
    # Tag history: every manifest and list tagged once alive, plus older
    # versions of the same names that ended inside or past the time machine.
    alive_tags = []
    for t, (manifest, _) in enumerate(manifests + lists):
        start = now_ms - rng.randint(30, 400) * DAY_MS
        immutable = rng.random() < 0.05
        alive_tags.append(plan.add("tag", repo, manifest, f"v{t}", start, None, False, immutable))
        for _ in range(rng.randint(0, 2)):
            old_start = start - rng.randint(1, 300) * DAY_MS
            plan.add("tag", repo, manifest, f"v{t}", old_start, start, rng.random() < 0.1, False)
    # Legacy V1 chains behind a few manifests, some with derived (squashed) storage.
    if rng.random() < 0.3:
        chain: list[Ref] = []
        for depth in range(rng.randint(2, 12)):
            chain.append(
                plan.add(
                    "image",
                    repo,
                    digest(plan.run, repo.row, "v1", depth)[7:],
                    blob(rng.randint(10_000, 5_000_000)),
                    chain[-1] if chain else None,
                )
            )
            if rng.random() < 0.2:
                plan.add(
                    "derived_image_storage",
                    chain[-1],
                    blob(rng.randint(10_000, 9_000_000)),
                    "squash",
                )
        plan.add("manifest_legacy_image", repo, manifests[0][0], chain[-1])
        if shape.pre_oci and rng.random() < 0.6:
            _plan_pre_oci(plan, rng, repo, chain, manifests[0][0], alive_tags[0], blob, now_ms)
    # Uploads in flight: some fresh, some abandoned long ago.
    for _ in range(rng.randint(0, 2)):
        expires = now_ms + DAY_MS if rng.random() < 0.5 else now_ms - 3 * DAY_MS
        plan.add(
            "uploaded_blob", repo, blob(rng.randint(1_000, 9_000_000)), ms_to_datetime(expires)
        )


def _plan_pre_oci(
    plan: Plan,
    rng: random.Random,
    repo: Ref,
    chain: list[Ref],
    manifest: Ref,
    oci_tag: Ref,
    blob: Callable[[int], Ref],
    now_ms: int,
) -> None:
    """Pre-OCI tag history behind a legacy chain, as a registry migrated from the
    ancestor's generation holds it (CONTRACT §3.1): the current version tagged in both
    models (mapping rows, a tag manifest mapped to the OCI manifest, labelled), and
    older versions (lifetimes in seconds) on the chain or on a branch of their own."""
    now_s, day_s = now_ms // 1000, DAY_MS // 1000
    current = plan.add("repository_tag", repo, chain[-1], "v0", now_s - 400 * day_s, None, False)
    plan.add("tag_to_repository_tag", repo, oci_tag, current)
    tag_manifest = plan.add("tag_manifest", current, digest(plan.run, repo.row, "tm", 0))
    plan.add("tag_manifest_to_manifest", tag_manifest, manifest)
    label = plan.add("label", "origin", "pre-oci", "text/plain", "manifest")
    label_row = plan.add("tag_manifest_label", repo, tag_manifest, label)
    plan.add("tag_manifest_label_map", tag_manifest, manifest, label, label_row, None)
    for version in range(1, rng.randint(2, 5)):
        if rng.random() < 0.5:  # a branch of its own off the chain's root
            image = plan.add(
                "image",
                repo,
                digest(plan.run, repo.row, "v1-branch", version)[7:],
                blob(rng.randint(10_000, 5_000_000)),
                chain[0],
            )
        else:
            image = rng.choice(chain)
        end_s = now_s - rng.randint(1, 60) * day_s
        old = plan.add(
            "repository_tag", repo, image, "v0", end_s - 30 * day_s, end_s, rng.random() < 0.1
        )
        old_manifest = plan.add("tag_manifest", old, digest(plan.run, repo.row, "tm", version))
        if rng.random() < 0.5:
            build = plan.add("label", "build", str(rng.randint(1, 9999)), "text/plain", "api")
            build_row = plan.add("tag_manifest_label", repo, old_manifest, build)
            plan.add("tag_manifest_label_map", old_manifest, None, build, build_row, None)


async def write(conn: Connection, plan: Plan) -> dict[str, int]:
    """Copy the plan into the registry, in one transaction; returns rows per table."""
    async with conn.transaction():
        ids: dict[str, list[int]] = {}
        for table, columns in TABLES:
            rows = plan.rows.get(table, [])
            if not rows:
                continue
            ids[table] = [
                row["id"]
                for row in await conn.fetch(
                    "SELECT nextval(pg_get_serial_sequence($1, 'id')) AS id"
                    " FROM generate_series(1, $2)",
                    table,
                    len(rows),
                )
            ]
            records = [
                tuple(
                    ids[table][i] if c == 0 else _resolve(value, ids) for c, value in enumerate(row)
                )
                for i, row in enumerate(rows)
            ]
            await conn.copy_records_to_table(table, records=records, columns=list(columns))
        await _ensure_empty_layer(conn)
    return plan.counts()


def _resolve(value: Any, ids: dict[str, list[int]]) -> Any:
    return ids[value.table][value.row] if isinstance(value, Ref) else value


async def _ensure_empty_layer(conn: Connection) -> None:
    """The protected empty layer exists in every real registry; make sure it does here."""
    await conn.execute(
        """
        WITH b AS (
            INSERT INTO blob (digest, size) VALUES ($1, 32)
            ON CONFLICT (digest) DO NOTHING RETURNING id
        )
        INSERT INTO blob_placement (blob_id, location) SELECT id, 's3-us-east' FROM b
        """,
        EMPTY_LAYER_DIGEST,
    )


@dataclass(frozen=True)
class ExpiredTag:
    namespace: str
    repository: str
    repository_id: int
    tag: str
    tag_id: int
    lifetime_end_ms: int


@dataclass(frozen=True)
class ExpiredLegacyTag:
    namespace: str
    repository: str
    repository_id: int
    tag: str
    repository_tag_id: int
    lifetime_end_ts: int


@dataclass(frozen=True)
class DeletedRepository:
    namespace: str
    repository: str
    repository_id: int


async def expire_tags(
    conn: Connection, run: str, *, fraction: float, now_ms: int, seed: int = 0
) -> list[ExpiredTag]:
    """End a share of the run's alive tags so long ago that their window has passed,
    as a registry does when users delete tags; returns them for the requests."""
    rows = await conn.fetch(
        """
        WITH chosen AS (
            SELECT t.id, n.removed_tag_expiration_s AS window_s
            FROM tag t
            JOIN repository r ON r.id = t.repository_id
            JOIN namespace n ON n.id = r.namespace_id
            WHERE n.name LIKE $1 AND t.lifetime_end_ms IS NULL AND NOT t.immutable
            ORDER BY md5(t.id::text || $2)
            LIMIT (SELECT ceil(count(*) * $3::float8)::bigint FROM tag t2
                   JOIN repository r2 ON r2.id = t2.repository_id
                   JOIN namespace n2 ON n2.id = r2.namespace_id
                   WHERE n2.name LIKE $1 AND t2.lifetime_end_ms IS NULL)
        )
        UPDATE tag t SET lifetime_end_ms = $4 - chosen.window_s * 1000 - 1000
        FROM chosen, repository r, namespace n
        WHERE t.id = chosen.id AND r.id = t.repository_id AND n.id = r.namespace_id
        RETURNING n.name AS namespace, r.name AS repository, r.id AS repository_id,
                  t.name AS tag, t.id AS tag_id, t.lifetime_end_ms
        """,
        f"demo-{run}-%",
        str(seed),
        fraction,
        now_ms,
    )
    return sorted((ExpiredTag(**dict(row)) for row in rows), key=lambda t: t.tag_id)


async def expire_legacy_tags(
    conn: Connection, run: str, *, fraction: float, now_ms: int, seed: int = 0
) -> list[ExpiredLegacyTag]:
    """End a share of the run's alive pre-OCI tags so long ago (in seconds) that their
    window has passed; returns them for the requests."""
    rows = await conn.fetch(
        """
        WITH alive AS (
            SELECT t.id, n.removed_tag_expiration_s AS window_s
            FROM repository_tag t
            JOIN repository r ON r.id = t.repository_id
            JOIN namespace n ON n.id = r.namespace_id
            WHERE n.name LIKE $1 AND t.lifetime_end_ts IS NULL
        ), chosen AS (
            SELECT * FROM alive ORDER BY md5(id::text || $2)
            LIMIT (SELECT ceil(count(*) * $3::float8)::bigint FROM alive)
        )
        UPDATE repository_tag t SET lifetime_end_ts = $4::bigint / 1000 - chosen.window_s - 1
        FROM chosen, repository r, namespace n
        WHERE t.id = chosen.id AND r.id = t.repository_id AND n.id = r.namespace_id
        RETURNING n.name AS namespace, r.name AS repository, r.id AS repository_id,
                  t.name AS tag, t.id AS repository_tag_id, t.lifetime_end_ts
        """,
        f"demo-{run}-%",
        str(seed),
        fraction,
        now_ms,
    )
    return sorted(
        (ExpiredLegacyTag(**dict(row)) for row in rows), key=lambda t: t.repository_tag_id
    )


async def delete_repositories(
    conn: Connection, run: str, *, fraction: float, seed: int = 0
) -> list[DeletedRepository]:
    """Mark a share of the run's repositories for deletion, as a registry does."""
    rows = await conn.fetch(
        """
        WITH chosen AS (
            SELECT r.id FROM repository r JOIN namespace n ON n.id = r.namespace_id
            WHERE n.name LIKE $1 AND r.state = 'normal'
            ORDER BY md5(r.id::text || $2)
            LIMIT (SELECT ceil(count(*) * $3::float8)::bigint FROM repository r2
                   JOIN namespace n2 ON n2.id = r2.namespace_id WHERE n2.name LIKE $1)
        )
        UPDATE repository r SET state = 'marked_for_deletion'
        FROM chosen, namespace n
        WHERE r.id = chosen.id AND n.id = r.namespace_id
        RETURNING n.name AS namespace, r.name AS repository, r.id AS repository_id
        """,
        f"demo-{run}-%",
        str(seed),
        fraction,
    )
    return sorted((DeletedRepository(**dict(row)) for row in rows), key=lambda r: r.repository_id)
