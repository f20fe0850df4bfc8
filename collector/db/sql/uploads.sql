-- name: delete_expired
-- Remove up to $3 of repository $1's uploads expired at $2 (all of them
-- when $4, for a purge) and queue their blobs.
-- $1 bigint repository id, $2 timestamptz now, $3 int limit, $4 bool purge, $5 text causation id
WITH gone AS (
    DELETE FROM uploaded_blob
    WHERE id IN (
        SELECT id FROM uploaded_blob
        WHERE repository_id = $1 AND ($4 OR expires_at <= $2)
        ORDER BY id
        LIMIT $3
        FOR UPDATE SKIP LOCKED
    )
    RETURNING blob_id
), queued AS (
    INSERT INTO gc.candidate (kind, object_id, repository_id, causation_id)
    SELECT DISTINCT 'blob', blob_id, $1, $5 FROM gone
)
SELECT count(*) FROM gone
