"""The floor: what PostgreSQL itself needs to delete the same garbage.

Set-based statements with no safety checks (no locks, no re-checks, no races
considered), no events, no candidate table, no transactions of their own:
the roots in a few statements, then one statement per kind of object, each
deciding only what the previous round freed (the frontier), until a round
frees nothing. It decides with the collector's own rule functions
(``gc.due_tags``, ``gc.unreferenced_manifests``, ...), so both end in the same
state.
"""

from __future__ import annotations

from datetime import datetime

from collector.db.connector import Connection
from collector.db.queries import load_queries

#: The roots, and what they free as the first frontier: due tags, pre-OCI tags with
#: their tag manifests, expired uploads, and everything of a marked repository.
_ROOTS = """
CREATE TEMP TABLE frontier (kind text, id bigint);
CREATE TEMP TABLE freed (kind text, id bigint);
CREATE TEMP TABLE marked AS
    SELECT id FROM repository WHERE gc.repository_is_marked(state);
CREATE TEMP TABLE doomed_tag AS
    SELECT id FROM gc.due_tags((SELECT now_ms FROM floor_now))
    UNION SELECT id FROM tag WHERE repository_id IN (SELECT id FROM marked);
CREATE TEMP TABLE doomed_legacy_tag AS
    SELECT id FROM gc.due_legacy_tags((SELECT now_ms FROM floor_now))
    UNION SELECT id FROM repository_tag WHERE repository_id IN (SELECT id FROM marked);
CREATE TEMP TABLE doomed_tag_manifest AS
    SELECT id FROM tag_manifest WHERE tag_id IN (SELECT id FROM doomed_legacy_tag);
DELETE FROM tag_to_repository_tag
    WHERE tag_id IN (SELECT id FROM doomed_tag)
       OR repository_tag_id IN (SELECT id FROM doomed_legacy_tag);
WITH gone AS (DELETE FROM tag WHERE id IN (SELECT id FROM doomed_tag) RETURNING manifest_id)
INSERT INTO frontier SELECT 'manifest', manifest_id FROM gone;
DELETE FROM tag_manifest_label_map
    WHERE tag_manifest_id IN (SELECT id FROM doomed_tag_manifest)
       OR tag_manifest_label_id IN (
           SELECT id FROM tag_manifest_label
           WHERE annotated_id IN (SELECT id FROM doomed_tag_manifest));
WITH gone AS (
    DELETE FROM tag_manifest_label WHERE annotated_id IN (SELECT id FROM doomed_tag_manifest)
    RETURNING label_id
)
INSERT INTO frontier SELECT 'label', label_id FROM gone;
WITH gone AS (
    DELETE FROM tag_manifest_to_manifest
    WHERE tag_manifest_id IN (SELECT id FROM doomed_tag_manifest)
    RETURNING manifest_id
)
INSERT INTO frontier SELECT 'manifest', manifest_id FROM gone;
DELETE FROM tag_manifest WHERE id IN (SELECT id FROM doomed_tag_manifest);
WITH gone AS (
    DELETE FROM repository_tag WHERE id IN (SELECT id FROM doomed_legacy_tag) RETURNING image_id
)
INSERT INTO frontier SELECT 'image', image_id FROM gone;
WITH gone AS (
    DELETE FROM uploaded_blob
    WHERE gc.upload_is_expired(expires_at, (SELECT at_time FROM floor_now))
       OR repository_id IN (SELECT id FROM marked)
    RETURNING blob_id
)
INSERT INTO frontier SELECT 'blob', blob_id FROM gone;
DELETE FROM app_tag WHERE repository_id IN (SELECT id FROM marked);
INSERT INTO frontier
    SELECT 'manifest', id FROM manifest WHERE repository_id IN (SELECT id FROM marked)
    UNION ALL SELECT 'image', id FROM image WHERE repository_id IN (SELECT id FROM marked);
"""

#: One round: each kind of object in the frontier that is unreferenced now goes, in one
#: statement with its link rows (foreign keys are checked at the statement's end),
#: and what those rows pointed at is freed for the next round.
_ROUND = [
    """
    WITH doomed AS (
        SELECT u.id FROM gc.unreferenced_manifests() u
        WHERE u.id IN (SELECT id FROM frontier WHERE kind = 'manifest')
    ), children AS (
        DELETE FROM manifest_child WHERE manifest_id IN (SELECT id FROM doomed)
        RETURNING 'manifest' AS kind, child_manifest_id AS id
    ), blobs AS (
        DELETE FROM manifest_blob WHERE manifest_id IN (SELECT id FROM doomed)
        RETURNING 'blob' AS kind, blob_id AS id
    ), label_maps AS (
        DELETE FROM tag_manifest_label_map
        WHERE manifest_id IN (SELECT id FROM doomed)
           OR manifest_label_id IN (
               SELECT id FROM manifest_label WHERE manifest_id IN (SELECT id FROM doomed))
    ), labels AS (
        DELETE FROM manifest_label WHERE manifest_id IN (SELECT id FROM doomed)
        RETURNING 'label' AS kind, label_id AS id
    ), images AS (
        DELETE FROM manifest_legacy_image WHERE manifest_id IN (SELECT id FROM doomed)
        RETURNING 'image' AS kind, image_id AS id
    ), referrers AS (
        SELECT 'manifest' AS kind, r.id
        FROM manifest s
        JOIN manifest r ON r.repository_id = s.repository_id AND r.subject_digest = s.digest
        WHERE s.id IN (SELECT id FROM doomed)
    ), gone AS (
        DELETE FROM manifest WHERE id IN (SELECT id FROM doomed)
    )
    INSERT INTO freed
    SELECT * FROM children UNION ALL SELECT * FROM blobs UNION ALL SELECT * FROM labels
    UNION ALL SELECT * FROM images UNION ALL SELECT * FROM referrers
    """,
    """
    WITH doomed AS (
        SELECT u.id FROM gc.unreferenced_labels() u
        WHERE u.id IN (SELECT id FROM frontier WHERE kind = 'label')
    ), label_maps AS (
        DELETE FROM tag_manifest_label_map WHERE label_id IN (SELECT id FROM doomed)
    )
    DELETE FROM label WHERE id IN (SELECT id FROM doomed)
    """,
    """
    WITH doomed AS (
        SELECT u.id FROM gc.unreferenced_images() u
        WHERE u.id IN (SELECT id FROM frontier WHERE kind = 'image')
    ), derived AS (
        DELETE FROM derived_image_storage WHERE source_image_id IN (SELECT id FROM doomed)
        RETURNING 'blob' AS kind, derivative_id AS id
    ), gone AS (
        DELETE FROM image WHERE id IN (SELECT id FROM doomed)
        RETURNING storage_id, parent_id
    )
    INSERT INTO freed
    SELECT * FROM derived
    UNION ALL SELECT 'blob', storage_id FROM gone
    UNION ALL SELECT 'image', parent_id FROM gone WHERE parent_id IS NOT NULL
    """,
    """
    WITH doomed AS (
        SELECT u.id FROM gc.unreferenced_blobs($1::timestamptz, $2::text[]) u
        WHERE u.id IN (SELECT id FROM frontier WHERE kind = 'blob')
    ), uploads AS (
        DELETE FROM uploaded_blob WHERE blob_id IN (SELECT id FROM doomed)
    ), placements AS (
        DELETE FROM blob_placement WHERE blob_id IN (SELECT id FROM doomed)
    )
    DELETE FROM blob WHERE id IN (SELECT id FROM doomed)
    """,
]

#: The next frontier: what this round freed, and what it left undecided (an object
#: still referenced stays out; one whose last reference went this round is freed).
_NEXT = """
TRUNCATE frontier;
INSERT INTO frontier SELECT DISTINCT kind, id FROM freed;
TRUNCATE freed;
"""

#: A marked repository goes once empty: the engine's own statement.
_DELETE_IF_EMPTY = load_queries("repositories.sql")["delete_if_empty"]


async def collect(conn: Connection, *, now_ms: int, at_time: datetime, protected: list[str]) -> int:
    """Delete the garbage at ``now_ms``; return how many rounds the fixpoint took."""
    await conn.execute(
        "CREATE TEMP TABLE floor_now AS"
        " SELECT $1::bigint AS now_ms, $2::timestamptz AS at_time, $3::text[] AS protected",
        now_ms,
        at_time,
        protected,
    )
    await conn.execute(_ROOTS)
    rounds = 0
    while await conn.fetchval("SELECT EXISTS (SELECT 1 FROM frontier)"):
        rounds += 1
        for statement in _ROUND:
            # Parameters, not the values in floor_now: a rule function given a subquery
            # is not inlined, and then judges every blob of the registry.
            await conn.execute(statement, *(() if "$1" not in statement else (at_time, protected)))
        await conn.execute(_NEXT)
    for row in await conn.fetch("SELECT id FROM marked"):
        await conn.execute(_DELETE_IF_EMPTY, row["id"])
    return rounds
