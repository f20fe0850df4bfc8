-- name: place
-- The sweep's place in the table of kind $1 (made on first use), locked until
-- the step commits: sweeps running at once take turns, each step covering the
-- next ids.
-- $1 text kind
INSERT INTO gc.sweep (kind) VALUES ($1)
ON CONFLICT (kind) DO UPDATE SET kind = excluded.kind
RETURNING last_id, until_id

-- name: start_pass
-- Begin a pass over the table of kind $1, up to its largest id now: rows
-- added later are younger than the grace period of this pass.
-- $1 text kind
UPDATE gc.sweep
SET last_id = 0,
    pass_started_at = now(),
    until_id = coalesce(
        CASE $1::text
            WHEN 'manifest' THEN (SELECT max(id) FROM manifest)
            WHEN 'label' THEN (SELECT max(id) FROM label)
            WHEN 'image' THEN (SELECT max(id) FROM image)
            WHEN 'blob' THEN (SELECT max(id) FROM blob)
        END,
        0
    )
WHERE kind = $1
RETURNING last_id, until_id

-- name: finish_pass
-- $1 text kind
UPDATE gc.sweep SET until_id = NULL, pass_finished_at = now() WHERE kind = $1

-- name: queue_range
-- Queue the unreferenced objects of kind $1 with ids in ($2, $3], created at
-- or before $4 and not queued already, as candidates; move the sweep's place
-- to $3. Returns how many rows the range holds and how many were queued.
-- $1 text kind, $2 bigint after id, $3 bigint up to id, $4 timestamptz grace cutoff,
-- $5 timestamptz now, $6 text[] protected digests, $7 text causation id
WITH queued AS (
    INSERT INTO gc.candidate (kind, object_id, repository_id, causation_id)
    SELECT o.kind, o.id, o.repository_id, $7
    FROM gc.unreferenced_objects($5, $6::text[]) o
    WHERE o.kind = $1 AND o.id > $2 AND o.id <= $3 AND o.created_at <= $4
      AND NOT EXISTS (SELECT 1 FROM gc.candidate c WHERE c.kind = o.kind AND c.object_id = o.id)
    RETURNING 1
), moved AS (
    UPDATE gc.sweep SET last_id = $3 WHERE kind = $1
)
SELECT (SELECT count(*) FROM queued) AS queued,
       CASE $1::text
           WHEN 'manifest' THEN (SELECT count(*) FROM manifest WHERE id > $2 AND id <= $3)
           WHEN 'label' THEN (SELECT count(*) FROM label WHERE id > $2 AND id <= $3)
           WHEN 'image' THEN (SELECT count(*) FROM image WHERE id > $2 AND id <= $3)
           WHEN 'blob' THEN (SELECT count(*) FROM blob WHERE id > $2 AND id <= $3)
       END AS scanned

-- name: queue_in
-- Queue the unreferenced manifests and legacy images of the repositories $1,
-- created at or before $3 and not queued already, as candidates of their
-- repository under its request. Labels and blobs belong to no repository:
-- only a registry-wide sweep judges them. Returns how many rows were judged
-- and how many were queued.
-- $1 bigint[] repository ids, $2 text[] causation ids (parallel), $3 timestamptz grace cutoff,
-- $4 timestamptz now, $5 text[] protected digests
WITH scope AS (
    SELECT * FROM unnest($1::bigint[], $2::text[]) AS s (repository_id, causation_id)
), queued AS (
    INSERT INTO gc.candidate (kind, object_id, repository_id, causation_id)
    SELECT o.kind, o.id, o.repository_id, s.causation_id
    FROM gc.unreferenced_objects($4, $5::text[]) o
    JOIN scope s ON s.repository_id = o.repository_id
    WHERE o.kind IN ('manifest', 'image') AND o.repository_id = ANY($1::bigint[])
      AND o.created_at <= $3
      AND NOT EXISTS (SELECT 1 FROM gc.candidate c WHERE c.kind = o.kind AND c.object_id = o.id)
    RETURNING 1
)
SELECT (SELECT count(*) FROM queued) AS queued,
       (SELECT count(*) FROM manifest WHERE repository_id = ANY($1::bigint[]))
       + (SELECT count(*) FROM image WHERE repository_id = ANY($1::bigint[])) AS scanned

-- name: due
-- Whether a registry-wide sweep is due: not every one of the $2 tables has a
-- pass that finished less than $1 ago and none under way.
-- $1 interval cadence, $2 int how many tables a sweep covers
SELECT count(*) < $2
FROM gc.sweep
WHERE until_id IS NULL AND pass_finished_at > now() - $1::interval
