-- name: lock
-- $1 bigint[] label ids
SELECT id FROM label WHERE id = ANY($1::bigint[]) ORDER BY id FOR UPDATE

-- name: unreferenced
-- Of the locked labels $1, those no manifest of any repository carries.
-- $1 bigint[] label ids
SELECT l.id
FROM label l
WHERE l.id = ANY($1::bigint[])
  AND NOT EXISTS (SELECT 1 FROM manifest_label ml WHERE ml.label_id = l.id)
ORDER BY l.id

-- name: delete
-- $1 bigint[] label ids, $2 text[] causation ids (parallel)
DELETE FROM label l
USING unnest($1::bigint[], $2::text[]) AS b (id, causation_id)
WHERE l.id = b.id
RETURNING l.id, l.key, b.causation_id
