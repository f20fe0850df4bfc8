-- name: claim_in
-- Take up to $3 candidates of kind $2 of the repositories $1, of share $5 of
-- $4 (gc.candidate_share, migration 0015: claims side by side neither hold the
-- same object nor objects that hold one another); the rows are deleted in the
-- claiming transaction, so a rollback hands them back.
-- $1 bigint[] repository ids, $2 text kind, $3 int limit, $4 int shares, $5 int share
DELETE FROM gc.candidate
WHERE id IN (
    SELECT id FROM gc.candidate
    WHERE repository_id = ANY($1::bigint[]) AND kind = $2
      AND gc.candidate_share(kind, object_id, repository_id, $4) = $5
    ORDER BY id
    LIMIT $3
    FOR UPDATE SKIP LOCKED
)
RETURNING object_id, causation_id

-- name: claim_any
-- Take up to $2 candidates of kind $1, whatever their repository (a
-- registry-wide collection: full batches however small each repository is),
-- of share $4 of $3 (gc.candidate_share, as claim_in).
-- $1 text kind, $2 int limit, $3 int shares, $4 int share
DELETE FROM gc.candidate
WHERE id IN (
    SELECT id FROM gc.candidate
    WHERE kind = $1
      AND gc.candidate_share(kind, object_id, repository_id, $3) = $4
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

-- name: pending_in
-- How many candidates of each kind wait in the repositories $1, counted up to
-- $2 (kinds with none left out), so that a fixpoint round runs only the
-- collectors that have something to claim, as many claims as fill batches.
-- $1 bigint[] repository ids, $2 int most to count
SELECT k.kind, w.waiting
FROM unnest(ARRAY['manifest', 'label', 'image', 'blob']) AS k (kind)
CROSS JOIN LATERAL (
    SELECT count(*) AS waiting FROM (
        SELECT 1 FROM gc.candidate c
        WHERE c.repository_id = ANY($1::bigint[]) AND c.kind = k.kind
        LIMIT $2
    ) AS f
) AS w
WHERE w.waiting > 0

-- name: pending_any
-- How many candidates of each kind wait in any repository, counted up to $1.
-- $1 int most to count
SELECT k.kind, w.waiting
FROM unnest(ARRAY['manifest', 'label', 'image', 'blob']) AS k (kind)
CROSS JOIN LATERAL (
    SELECT count(*) AS waiting FROM (
        SELECT 1 FROM gc.candidate c WHERE c.kind = k.kind LIMIT $1
    ) AS f
) AS w
WHERE w.waiting > 0

-- name: backlog
-- What waits in gc.candidate, committed and undecided, by kind: how many, and how
-- long the oldest has waited (for the metrics).
SELECT kind, count(*) AS waiting, extract(epoch FROM now() - min(created_at))::float8 AS oldest_s
FROM gc.candidate
GROUP BY kind
