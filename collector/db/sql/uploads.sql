-- name: delete_expired
-- Remove up to $3 uploads expired at $2 (all of them when $4, for a purge)
-- of repository $1 (NULL: of every repository) and queue their blobs.
-- $1 bigint repository id or NULL, $2 timestamptz now, $3 int limit, $4 bool purge,
-- $5 text causation id
WITH gone AS (
    DELETE FROM uploaded_blob
    WHERE id IN (
        SELECT id FROM uploaded_blob
        WHERE ($1::bigint IS NULL OR repository_id = $1)
          AND ($4 OR expires_at <= $2)
        ORDER BY id
        LIMIT $3
        FOR UPDATE SKIP LOCKED
    )
    RETURNING blob_id, repository_id
), queued AS (
    INSERT INTO gc.candidate (kind, object_id, repository_id, causation_id)
    SELECT DISTINCT ON (blob_id) 'blob', blob_id, repository_id, $5 FROM gone
)
SELECT count(*) FROM gone
