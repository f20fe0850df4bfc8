-- name: claim_in
-- Take up to $3 candidates of kind $2 of the repositories $1; the rows are
-- deleted in the claiming transaction, so a rollback hands them back.
-- $1 bigint[] repository ids, $2 text kind, $3 int limit
DELETE FROM gc.candidate
WHERE id IN (
    SELECT id FROM gc.candidate
    WHERE repository_id = ANY($1::bigint[]) AND kind = $2
    ORDER BY id
    LIMIT $3
    FOR UPDATE SKIP LOCKED
)
RETURNING object_id, causation_id

-- name: claim_any
-- Take up to $2 candidates of kind $1, whatever their repository (a
-- registry-wide collection: full batches however small each repository is).
-- $1 text kind, $2 int limit
DELETE FROM gc.candidate
WHERE id IN (
    SELECT id FROM gc.candidate
    WHERE kind = $1
    ORDER BY id
    LIMIT $2
    FOR UPDATE SKIP LOCKED
)
RETURNING object_id, causation_id

-- name: queue
-- Queue objects as candidates.
-- $1 text kind, $2 bigint[] object ids, $3 bigint[] repository ids, $4 text[] causation ids (parallel)
INSERT INTO gc.candidate (kind, object_id, repository_id, causation_id)
SELECT $1, object_id, repository_id, causation_id
FROM unnest($2::bigint[], $3::bigint[], $4::text[]) AS q (object_id, repository_id, causation_id)

-- name: pending_kinds_in
-- The kinds with candidates waiting in the repositories $1, so that a
-- fixpoint round runs only the collectors that have something to claim.
-- $1 bigint[] repository ids
SELECT k.kind FROM unnest(ARRAY['manifest', 'label', 'image', 'blob']) AS k (kind)
WHERE EXISTS (
    SELECT 1 FROM gc.candidate c
    WHERE c.repository_id = ANY($1::bigint[]) AND c.kind = k.kind
)

-- name: pending_kinds_any
-- The kinds with candidates waiting in any repository. No parameters.
SELECT k.kind FROM unnest(ARRAY['manifest', 'label', 'image', 'blob']) AS k (kind)
WHERE EXISTS (SELECT 1 FROM gc.candidate c WHERE c.kind = k.kind)

-- name: backlog
-- What waits in gc.candidate, committed and undecided, by kind: how many, and how
-- long the oldest has waited (for the metrics).
SELECT kind, count(*) AS waiting, extract(epoch FROM now() - min(created_at))::float8 AS oldest_s
FROM gc.candidate
GROUP BY kind
