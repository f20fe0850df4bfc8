-- name: delete_expired
-- Remove up to $3 uploads expired at $2 (all of them when $4, for a purge)
-- of the repositories $1 (NULL: of every repository) and queue their blobs
-- under the request that caused the collection of each repository.
-- $1 bigint[] repository ids or NULL, $2 timestamptz now, $3 int limit, $4 bool purge,
-- $5 text[] causation ids parallel to $1 (with $1 NULL: one, for every repository)
WITH scope AS (
    SELECT * FROM unnest($1::bigint[], $5::text[]) AS s (repository_id, causation_id)
), gone AS (
    DELETE FROM uploaded_blob
    WHERE id IN (
        SELECT id FROM uploaded_blob
        WHERE ($1::bigint[] IS NULL OR repository_id = ANY($1::bigint[]))
          AND ($4 OR gc.upload_is_expired(expires_at, $2))
        ORDER BY id
        LIMIT $3
        FOR UPDATE SKIP LOCKED
    )
    RETURNING blob_id, repository_id
), queued AS (
    INSERT INTO gc.candidate (kind, object_id, repository_id, causation_id)
    SELECT DISTINCT ON (g.blob_id) 'blob', g.blob_id, g.repository_id,
           coalesce(s.causation_id, $5[1])
    FROM gone g LEFT JOIN scope s USING (repository_id)
)
SELECT count(*) FROM gone
