-- name: claim
-- Take up to $3 candidates of kind $2 for repository $1; the rows are
-- deleted in the claiming transaction, so a rollback hands them back.
-- $1 bigint repository id, $2 text kind, $3 int limit
DELETE FROM gc.candidate
WHERE id IN (
    SELECT id FROM gc.candidate
    WHERE repository_id = $1 AND kind = $2
    ORDER BY id
    LIMIT $3
    FOR UPDATE SKIP LOCKED
)
RETURNING object_id, causation_id

-- name: queue
-- Queue objects as candidates of one repository context.
-- $1 text[] kinds, $2 bigint[] object ids, $3 text[] causation ids (parallel), $4 bigint repository id
INSERT INTO gc.candidate (kind, object_id, repository_id, causation_id)
SELECT kind, object_id, $4, causation_id
FROM unnest($1::text[], $2::bigint[], $3::text[]) AS q (kind, object_id, causation_id)
