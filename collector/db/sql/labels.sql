-- name: lock
-- $1 bigint[] label ids
SELECT id FROM label WHERE id = ANY($1::bigint[]) ORDER BY id FOR UPDATE

-- name: unreferenced
-- Of the locked labels $1, those nothing keeps alive (gc.unreferenced_labels).
-- $1 bigint[] label ids
SELECT id FROM gc.unreferenced_labels() WHERE id = ANY($1::bigint[]) ORDER BY id

-- name: delete
-- Delete garbage labels with the pre-OCI label-map rows naming them (mapping
-- rows, never references).
-- $1 bigint[] label ids, $2 text[] causation ids (parallel)
WITH label_maps AS (
    DELETE FROM tag_manifest_label_map x WHERE x.label_id = ANY($1::bigint[])
)
DELETE FROM label l
USING unnest($1::bigint[], $2::text[]) AS b (id, causation_id)
WHERE l.id = b.id
RETURNING l.id, l.key, b.causation_id
