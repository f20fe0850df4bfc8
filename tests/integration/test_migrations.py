"""Schema migrations on real, throwaway PostgreSQL databases, checked against CONTRACT §3."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import pytest

from collector.db.migrations import available_migrations, migrate
from collector.errors import ConfigError
from tests.conftest import ADMIN_URL

#: CONTRACT §3, literally: every table and the columns it names (``id`` for all).
CONTRACT_COLUMNS: dict[str, set[str]] = {
    "namespace": {"id", "name", "removed_tag_expiration_s"},
    "repository": {"id", "namespace_id", "name", "kind", "state"},
    "blob": {"id", "digest", "size", "created_at"},
    "blob_placement": {"id", "blob_id", "location"},
    "uploaded_blob": {"id", "repository_id", "blob_id", "expires_at"},
    "manifest": {
        "id",
        "repository_id",
        "digest",
        "media_type",
        "manifest_bytes",
        "subject_digest",
    },
    "manifest_blob": {"id", "repository_id", "manifest_id", "blob_id"},
    "manifest_child": {"id", "repository_id", "manifest_id", "child_manifest_id"},
    "label": {"id", "key", "value", "media_type", "source_type"},
    "manifest_label": {"id", "repository_id", "manifest_id", "label_id"},
    "tag": {
        "id",
        "repository_id",
        "manifest_id",
        "name",
        "lifetime_start_ms",
        "lifetime_end_ms",
        "hidden",
        "reversion",
        "immutable",
        "linked_tag_id",
    },
    "image": {"id", "repository_id", "docker_image_id", "storage_id", "parent_id"},
    "derived_image_storage": {"id", "source_image_id", "derivative_id", "transformation"},
    "manifest_legacy_image": {"id", "repository_id", "manifest_id", "image_id"},
    "app_tag": {"id", "repository_id", "name", "linked_tag_id", "lifetime_end_ms"},
    # §3.1, the pre-OCI model
    "repository_tag": {
        "id",
        "repository_id",
        "image_id",
        "name",
        "lifetime_start_ts",
        "lifetime_end_ts",
        "hidden",
        "reversion",
        "linked_tag_id",
    },
    "tag_manifest": {"id", "tag_id", "digest", "json_data"},
    "tag_manifest_to_manifest": {"id", "tag_manifest_id", "manifest_id", "broken"},
    "tag_to_repository_tag": {"id", "repository_id", "tag_id", "repository_tag_id"},
    "tag_manifest_label": {"id", "repository_id", "annotated_id", "label_id"},
    "tag_manifest_label_map": {
        "id",
        "tag_manifest_id",
        "manifest_id",
        "label_id",
        "tag_manifest_label_id",
        "manifest_label_id",
        "broken_manifest",
    },
}

#: CONTRACT §3's arrows, literally: (table, column) → referenced table (its ``id``).
CONTRACT_FOREIGN_KEYS: dict[tuple[str, str], str] = {
    ("repository", "namespace_id"): "namespace",
    ("blob_placement", "blob_id"): "blob",
    ("uploaded_blob", "repository_id"): "repository",
    ("uploaded_blob", "blob_id"): "blob",
    ("manifest", "repository_id"): "repository",
    ("manifest_blob", "manifest_id"): "manifest",
    ("manifest_blob", "blob_id"): "blob",
    ("manifest_child", "manifest_id"): "manifest",
    ("manifest_child", "child_manifest_id"): "manifest",
    ("manifest_label", "manifest_id"): "manifest",
    ("manifest_label", "label_id"): "label",
    ("tag", "repository_id"): "repository",
    ("tag", "manifest_id"): "manifest",
    ("tag", "linked_tag_id"): "tag",
    ("image", "repository_id"): "repository",
    ("image", "storage_id"): "blob",
    ("image", "parent_id"): "image",
    ("derived_image_storage", "source_image_id"): "image",
    ("derived_image_storage", "derivative_id"): "blob",
    ("manifest_legacy_image", "manifest_id"): "manifest",
    ("manifest_legacy_image", "image_id"): "image",
    ("app_tag", "repository_id"): "repository",
    ("app_tag", "linked_tag_id"): "app_tag",
    ("repository_tag", "repository_id"): "repository",
    ("repository_tag", "image_id"): "image",
    ("repository_tag", "linked_tag_id"): "repository_tag",
    ("tag_manifest", "tag_id"): "repository_tag",
    ("tag_manifest_to_manifest", "tag_manifest_id"): "tag_manifest",
    ("tag_manifest_to_manifest", "manifest_id"): "manifest",
    ("tag_to_repository_tag", "repository_id"): "repository",
    ("tag_to_repository_tag", "tag_id"): "tag",
    ("tag_to_repository_tag", "repository_tag_id"): "repository_tag",
    ("tag_manifest_label", "repository_id"): "repository",
    ("tag_manifest_label", "annotated_id"): "tag_manifest",
    ("tag_manifest_label", "label_id"): "label",
    ("tag_manifest_label_map", "tag_manifest_id"): "tag_manifest",
    ("tag_manifest_label_map", "manifest_id"): "manifest",
    ("tag_manifest_label_map", "label_id"): "label",
    ("tag_manifest_label_map", "tag_manifest_label_id"): "tag_manifest_label",
    ("tag_manifest_label_map", "manifest_label_id"): "manifest_label",
}

CONNECT_TIMEOUT_S = 10.0
MIGRATE_TIMEOUT_S = 60.0

NewDatabase = Callable[[], Awaitable[str]]


async def connect(url: str) -> asyncpg.Connection[asyncpg.Record]:
    return await asyncpg.connect(url, timeout=CONNECT_TIMEOUT_S)


@pytest.fixture(scope="module")
async def new_database() -> AsyncIterator[NewDatabase]:
    """A factory of empty databases (``migrations_test_<hex>``), all dropped at the end."""
    try:
        admin = await connect(ADMIN_URL)
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.exit(f"PostgreSQL is not reachable at {ADMIN_URL} ({exc}); run scripts/services up")
    created: list[str] = []

    async def create() -> str:
        name = f"migrations_test_{uuid.uuid4().hex[:12]}"
        await admin.execute(f"CREATE DATABASE {name}")
        created.append(name)
        return ADMIN_URL.rsplit("/", 1)[0] + "/" + name

    try:
        yield create
    finally:
        try:
            for name in created:
                await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        finally:
            await admin.close()


@pytest.fixture(scope="module")
async def migrated(new_database: NewDatabase) -> AsyncIterator[asyncpg.Connection[asyncpg.Record]]:
    """A connection to a database built by the migrations alone."""
    conn = await connect(await new_database())
    try:
        await asyncio.wait_for(migrate(conn), MIGRATE_TIMEOUT_S)
        yield conn
    finally:
        await conn.close()


async def applied_versions(conn: asyncpg.Connection[asyncpg.Record]) -> list[int]:
    rows = await conn.fetch("SELECT version FROM gc.schema_migration ORDER BY version")
    return [row["version"] for row in rows]


async def test_migrate_applies_every_migration_once(new_database: NewDatabase) -> None:
    """On an empty database migrate() applies every available migration; a rerun applies none."""
    available = [m.version for m in available_migrations()]
    assert available, "no migrations found in the package"
    conn = await connect(await new_database())
    try:
        first = await asyncio.wait_for(migrate(conn), MIGRATE_TIMEOUT_S)
        assert [m.version for m in first] == available
        assert await applied_versions(conn) == available
        assert await asyncio.wait_for(migrate(conn), MIGRATE_TIMEOUT_S) == []
        assert await applied_versions(conn) == available
    finally:
        await conn.close()


async def test_concurrent_migrations_apply_each_migration_exactly_once(
    new_database: NewDatabase,
) -> None:
    """Two migrate() calls racing on a fresh database both succeed; each migration runs once."""
    url = await new_database()
    one, two = await connect(url), await connect(url)
    try:
        results = await asyncio.wait_for(
            asyncio.gather(migrate(one), migrate(two)), MIGRATE_TIMEOUT_S
        )
        versions = sorted(m.version for result in results for m in result)
        available = [m.version for m in available_migrations()]
        assert versions == available
        assert await applied_versions(one) == available
    finally:
        await one.close()
        await two.close()


async def test_contract_tables_and_columns_exist(
    migrated: asyncpg.Connection[asyncpg.Record],
) -> None:
    """Every table and column CONTRACT §3 names exists, with that name, in schema public."""
    rows = await migrated.fetch(
        "SELECT table_name, column_name FROM information_schema.columns"
        " WHERE table_schema = 'public'"
    )
    found: dict[str, set[str]] = {}
    for row in rows:
        found.setdefault(row["table_name"], set()).add(row["column_name"])
    missing = {
        table: sorted(columns - found.get(table, set()))
        for table, columns in CONTRACT_COLUMNS.items()
        if columns - found.get(table, set())
    }
    assert missing == {}


async def test_every_foreign_key_column_leads_an_index(
    migrated: asyncpg.Connection[asyncpg.Record],
) -> None:
    """Each foreign key's columns lead some index on its table (unique ones count), so that
    deleting a referenced row never scans the referencing table."""
    foreign_keys = await migrated.fetch(
        """
        SELECT c.conrelid, c.conrelid::regclass::text AS table_name, c.conname,
               array_agg(a.attname::text ORDER BY k.ord) AS columns
        FROM pg_constraint c
        CROSS JOIN LATERAL unnest(c.conkey) WITH ORDINALITY AS k(attnum, ord)
        JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum
        WHERE c.contype = 'f' AND c.connamespace = 'public'::regnamespace
        GROUP BY c.conrelid, c.conname
        """
    )
    indexes = await migrated.fetch(
        """
        SELECT i.indrelid, i.indexrelid::regclass::text AS index_name,
               pg_get_expr(i.indpred, i.indrelid) AS predicate,
               array_agg(a.attname::text ORDER BY k.ord) AS columns
        FROM pg_index i
        JOIN pg_class t ON t.oid = i.indrelid
        CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
        LEFT JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
        WHERE t.relnamespace = 'public'::regnamespace
        GROUP BY i.indrelid, i.indexrelid, i.indpred
        """
    )
    assert len(foreign_keys) >= len(CONTRACT_FOREIGN_KEYS)

    def serves(index: asyncpg.Record, fk: asyncpg.Record) -> bool:
        width = len(fk["columns"])
        if index["indrelid"] != fk["conrelid"] or index["columns"][:width] != fk["columns"]:
            return False
        # A partial index serves the lookups only if its predicate is implied by
        # "column = value", i.e. it merely leaves out NULLs.
        predicate = index["predicate"]
        return predicate is None or (
            width == 1 and predicate == f"({fk['columns'][0]} IS NOT NULL)"
        )

    unindexed = sorted(
        f"{fk['table_name']}({', '.join(fk['columns'])}) [{fk['conname']}]"
        for fk in foreign_keys
        if not any(serves(index, fk) for index in indexes)
    )
    assert unindexed == []


async def test_contract_foreign_keys_are_references_constraints(
    migrated: asyncpg.Connection[asyncpg.Record],
) -> None:
    """Every link CONTRACT §3 draws is a real REFERENCES constraint to the target's id."""
    rows = await migrated.fetch(
        """
        SELECT c.conrelid::regclass::text AS table_name, a.attname::text AS column_name,
               c.confrelid::regclass::text AS target, fa.attname::text AS target_column
        FROM pg_constraint c
        JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1]
        JOIN pg_attribute fa ON fa.attrelid = c.confrelid AND fa.attnum = c.confkey[1]
        WHERE c.contype = 'f' AND c.connamespace = 'public'::regnamespace
          AND cardinality(c.conkey) = 1
        """
    )
    found = {
        (row["table_name"], row["column_name"]): (row["target"], row["target_column"])
        for row in rows
    }
    wrong = {
        link: found.get(link)
        for link, target in CONTRACT_FOREIGN_KEYS.items()
        if found.get(link) != (target, "id")
    }
    assert wrong == {}


async def test_migrate_adopts_existing_registry_tables(new_database: NewDatabase) -> None:
    """On a database that already has registry tables, migrate() keeps them and their rows
    and builds the rest around them (CREATE ... IF NOT EXISTS)."""
    conn = await connect(await new_database())
    try:
        await conn.execute(
            """
            CREATE TABLE namespace (
                id bigserial PRIMARY KEY,
                name text NOT NULL UNIQUE,
                removed_tag_expiration_s bigint NOT NULL DEFAULT 1209600
            );
            INSERT INTO namespace (name, removed_tag_expiration_s) VALUES ('existing', 60);
            """
        )
        applied = await asyncio.wait_for(migrate(conn), MIGRATE_TIMEOUT_S)
        assert [m.version for m in applied] == [m.version for m in available_migrations()]
        namespace_id = await conn.fetchval(
            "SELECT id FROM namespace WHERE name = 'existing' AND removed_tag_expiration_s = 60"
        )
        assert namespace_id is not None
        # The tables the migration created link to the one that was already there.
        repository_id = await conn.fetchval(
            "INSERT INTO repository (namespace_id, name) VALUES ($1, 'repo') RETURNING id",
            namespace_id,
        )
        assert repository_id is not None
        with pytest.raises(asyncpg.ForeignKeyViolationError):
            await conn.execute(
                "INSERT INTO repository (namespace_id, name) VALUES ($1, 'orphan')",
                namespace_id + 1000,
            )
    finally:
        await conn.close()


async def test_migrate_indexes_foreign_keys_of_adopted_tables(new_database: NewDatabase) -> None:
    """A registry's own blob_placement table, without the unique key, gets the index on
    blob_id that collection needs (keys are indexes of their own, not table constraints)."""
    conn = await connect(await new_database())
    try:
        await conn.execute(
            """
            CREATE TABLE blob (
                id bigserial PRIMARY KEY, digest text NOT NULL UNIQUE, size bigint NOT NULL,
                created_at timestamptz NOT NULL DEFAULT now()
            );
            CREATE TABLE blob_placement (
                id bigserial PRIMARY KEY,
                blob_id bigint NOT NULL REFERENCES blob (id),
                location text NOT NULL
            );
            """
        )
        await asyncio.wait_for(migrate(conn), MIGRATE_TIMEOUT_S)
        leading = await conn.fetchval(
            """
            SELECT count(*) FROM pg_index i
            JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
            WHERE i.indrelid = 'blob_placement'::regclass AND a.attname = 'blob_id'
            """
        )
        assert leading == 1
    finally:
        await conn.close()


async def test_migrate_adopts_a_registry_of_both_tag_models(new_database: NewDatabase) -> None:
    """A registry migrated from the ancestor's generation already has the pre-OCI tables,
    with rows and without the indexes collection needs: migrate() keeps the rows, adds the
    indexes, and builds the rest of the model around them."""
    conn = await connect(await new_database())
    try:
        await conn.execute(
            """
            CREATE TABLE namespace (id bigserial PRIMARY KEY, name text NOT NULL UNIQUE,
                removed_tag_expiration_s bigint NOT NULL DEFAULT 1209600);
            CREATE TABLE repository (id bigserial PRIMARY KEY,
                namespace_id bigint NOT NULL REFERENCES namespace (id), name text NOT NULL,
                kind text NOT NULL DEFAULT 'image', state text NOT NULL DEFAULT 'normal');
            CREATE TABLE blob (id bigserial PRIMARY KEY, digest text NOT NULL UNIQUE,
                size bigint NOT NULL, created_at timestamptz NOT NULL DEFAULT now());
            CREATE TABLE image (id bigserial PRIMARY KEY,
                repository_id bigint NOT NULL REFERENCES repository (id),
                docker_image_id text NOT NULL, storage_id bigint NOT NULL REFERENCES blob (id),
                parent_id bigint REFERENCES image (id));
            CREATE TABLE repository_tag (id bigserial PRIMARY KEY,
                repository_id bigint NOT NULL REFERENCES repository (id),
                image_id bigint NOT NULL REFERENCES image (id), name text NOT NULL,
                lifetime_start_ts bigint NOT NULL, lifetime_end_ts bigint,
                hidden boolean NOT NULL DEFAULT false, reversion boolean NOT NULL DEFAULT false,
                linked_tag_id bigint REFERENCES repository_tag (id) ON DELETE SET NULL);
            INSERT INTO namespace (name) VALUES ('old');
            INSERT INTO repository (namespace_id, name) VALUES (1, 'app');
            INSERT INTO blob (digest, size) VALUES ('sha256:x', 1);
            INSERT INTO image (repository_id, docker_image_id, storage_id) VALUES (1, 'i', 1);
            INSERT INTO repository_tag (repository_id, image_id, name, lifetime_start_ts)
                VALUES (1, 1, 'latest', 0), (1, 1, 'alias', 0);
            UPDATE repository_tag SET linked_tag_id = 1 WHERE id = 2;
            """
        )
        await asyncio.wait_for(migrate(conn), MIGRATE_TIMEOUT_S)

        indexed = await conn.fetch(
            """
            SELECT a.attname::text AS column_name FROM pg_index i
            JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
            WHERE i.indrelid = 'repository_tag'::regclass
            """
        )
        assert {"image_id", "linked_tag_id", "repository_id"} <= {
            row["column_name"] for row in indexed
        }
        assert await conn.fetchval("SELECT count(*) FROM repository_tag") == 2
        tag_manifest = await conn.fetchval(
            "INSERT INTO tag_manifest (tag_id, digest) VALUES (1, 'sha256:m') RETURNING id"
        )
        assert tag_manifest is not None
    finally:
        await conn.close()


async def test_migrate_refuses_a_database_migrated_by_another_version(
    new_database: NewDatabase,
) -> None:
    """A version number applied under another name means the database and the code
    disagree: migrate() refuses with a clear error instead of skipping the migration."""
    conn = await connect(await new_database())
    try:
        await asyncio.wait_for(migrate(conn), MIGRATE_TIMEOUT_S)
        await conn.execute(
            "UPDATE gc.schema_migration SET name = 'something_else' WHERE version = 2"
        )
        with pytest.raises(ConfigError, match="migration 2 was applied as 'something_else'"):
            await asyncio.wait_for(migrate(conn), MIGRATE_TIMEOUT_S)
    finally:
        await conn.close()
